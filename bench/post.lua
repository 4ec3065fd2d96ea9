-- wrk script: POST one ~300-byte event per request with the bench API key.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-CS-API-Key"] = "cs_bench_key"
local now = os.time() * 1000
wrk.body = '{"user_id":"user_4242","event_type":"page_view","event_time":' .. now ..
  ',"experiment_id":"exp_42","variant":"A","properties":{"page":"/products/4242",' ..
  '"referrer":"https://www.example.com/search?q=running+shoes","session_id":"9f86d081884c7d65",' ..
  '"value":19.99,"items":[3,14,15]}}'
