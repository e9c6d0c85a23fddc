"""The applications on top of the library: the CLI (`fmsplat ...`), the HTTP server, the viser viewer,
the demo and the CLI's per-verb back-ends. Thin adapters: each turns a user's input into library calls
and the library's results into files, JSON and pictures; nothing below imports them."""
