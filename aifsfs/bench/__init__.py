"""`aifs bench`: the side-by-side benchmark of the AIFS mount against its peers.

Modules: `cli` (the `bench` subcommand: `register(subparsers)`, `main(argv)`), `targets` (one
class per filesystem: set-up, mount, unmount, processes to measure), `workloads` (what is
timed, and the `FIGURES` list), `runner` (the order of phases, cold reads, cleanup on error and
signals), `report` (statistics, AIFS/peer ratios, table, JSON, plot), `sysinfo` (the machine),
`procs` (process and mount helpers). `scripts/bench` runs the full set; docs/BENCHMARKS.md has
the latest figures and what bounds each.
"""
