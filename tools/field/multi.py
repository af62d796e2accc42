"""One job on several ports at once: a progress bar per port, then a summary table.

A job is fn(port, progress) -> (ok, summary); progress(done, total) moves the port's bar. A
UserError on one port is that port's failure, never the others'.
"""

import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import UserError


def run(job, port_list, title, console=None):
    """Run `job` on every port; returns the exit status (0: all ok, 1: some failed)."""
    console = console or Console()
    results = {}
    if len(port_list) == 1:  # one bar while it runs (esptool's), then the verdict; a UserError goes up
        port = port_list[0]
        with Progress(TextColumn(title), BarColumn(), TextColumn("{task.percentage:>3.0f} %"), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task(title, total=None)
            ok, summary = job(port, lambda done, total: bar.update(task, completed=done, total=total or 1))
        if summary:
            console.print(summary, soft_wrap=True, markup=False, highlight=False)
        return 0 if ok else 1
    with Progress(TextColumn("{task.fields[port]:<16}"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        tasks = {p: bars.add_task("waiting", total=1, port=p) for p in port_list}

        def one(port):
            task = tasks[port]

            def progress(done, total):
                bars.update(task, completed=done, total=total or 1, description=title)

            try:
                results[port] = job(port, progress)
            except UserError as e:
                results[port] = (False, str(e))
            except Exception as e:  # one port's surprise is reported, never a traceback for all
                results[port] = (False, f"{port}: {type(e).__name__}: {e}")
            ok = results[port][0]
            bars.update(task, completed=1, total=1, description="[green]done" if ok else "[red]failed")

        threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in port_list]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    table = Table(title=f"{title}: {sum(r[0] for r in results.values())} of {len(port_list)} ok")
    table.add_column("port")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for p in port_list:
        ok, summary = results[p]
        table.add_row(p, "[green]ok" if ok else "[red]FAILED", str(summary))
    console.print(table)
    return 0 if all(r[0] for r in results.values()) else 1
