"""Benchmarks (issue 7): subgroup recovery, serving load and training scale; ``make bench`` runs them all.

Each section is a module ``benchmarks/<name>.py`` with ``run(quick: bool, out_dir: Path) -> str``
returning a Markdown section; :mod:`benchmarks.run` collects them into ``benchmarks/RESULTS.md``.
"""
