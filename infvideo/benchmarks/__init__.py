"""The benchmarks that ship with the package: ``python -m infvideo bench`` runs the grid
(``grid``: every op and the whole step, every provider side by side). ``harness`` is the timing
and output code every benchmark shares, the scripts in the checkout's bench/ folder included;
``published`` is the labelled baseline with the published code's cost structure."""
