// Segment's Node SDK (@segment/analytics-node), unchanged but for its host,
// sends one call of each type to sluice.
//
//     node segment_node.js HOST WRITE_KEY TAG
//
// User ids and event names carry TAG so the test finds them in Kafka.
// Exits 1 if the SDK reports any error or a call is not delivered.
const { Analytics } = require('@segment/analytics-node');

const [host, writeKey, tag] = process.argv.slice(2);
const analytics = new Analytics({ writeKey, host, flushAt: 10, maxRetries: 2 });
const errors = [];
analytics.on('error', (error) => errors.push(String(error.reason ?? error)));
const user = `${tag}_user`;
const done = (error) => {
  if (error) errors.push(String(error));
};
analytics.track({ userId: user, event: `${tag} Order Completed`, properties: { total: 42.5, items: [1, 2] }, context: { app: { name: 'node' } } }, done);
analytics.identify({ userId: user, traits: { plan: 'pro', email: 'a@example.com' } }, done);
analytics.page({ userId: user, category: 'Docs', name: 'Getting started', properties: { path: '/start' } }, done);
analytics.screen({ userId: user, name: 'Home', properties: { tab: 2 } }, done);
analytics.group({ userId: user, groupId: `${tag}_group`, traits: { seats: 5 } }, done);
analytics.alias({ previousId: `${tag}_previous`, userId: user }, done);
analytics.track({ anonymousId: `${tag}_anonymous`, event: `${tag} Anonymous Visit` }, done);
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  if (errors.length) {
    console.log('errors:', errors);
    process.exit(1);
  }
  console.log('sent 7 calls');
});
