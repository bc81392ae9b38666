def record(rows: list, row: dict, out) -> None:
    """Prints a result row as a JSON line, appends it to `rows` and to the file `out` (if given),
    so a benchmark cut short keeps what it measured and a second run into the same file keeps
    the first run's rows."""
    import json

    from qresnet import results

    print(json.dumps(row), flush=True)
    rows.append(row)
    if out:
        results.append_jsonl(out, row)
