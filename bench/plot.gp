# Plots of one scripts/bench run (gnuplot; called by scripts/bench with
# dir, names and machine set):
# - latency-throughput.png: p50 and p99 against achieved req/s, open loop,
#   single events, one line per target;
# - cpu-per-request.png: CPU µs per request by thread kind, stacked, for
#   single events (closed loop) and batches of 100 (per request / 100).
set terminal pngcairo size 1100,650 font "sans,11"
set datafile separator whitespace
set key outside right top
set grid
set output dir."/latency-throughput.png"
set title "Latency against throughput, single events, open loop (".machine.")" noenhanced
set xlabel "achieved requests/s"
set ylabel "latency (ms, log scale)"
set logscale y
set format x "%.0s%c"
plot for [i=1:words(names)] dir."/".word(names, i).".curve" using 2:5 with linespoints lc i lw 2 pt 7 title word(names, i)." p99" noenhanced, \
     for [i=1:words(names)] dir."/".word(names, i).".curve" using 2:3 with linespoints lc i dt 2 lw 1 pt 6 title word(names, i)." p50" noenhanced
unset logscale y
set format x "%g"

set output dir."/cpu-per-request.png"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.7
set ylabel "CPU µs per request"
set xlabel ""
set key outside bottom center horizontal
set xtics noenhanced
set multiplot layout 1,2 title "CPU µs per request by thread kind (".machine.")" noenhanced
set title "single events, closed loop"
plot dir."/cpu-single.dat" using 2:xtic(1) title "event loops", '' using 3 title "producers", '' using 4 title "librdkafka", '' using 5 title "other"
set title "batches of 100 (per request of 100 events)"
plot dir."/cpu-batch100.dat" using 2:xtic(1) title "event loops", '' using 3 title "producers", '' using 4 title "librdkafka", '' using 5 title "other"
unset multiplot
