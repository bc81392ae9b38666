def record(rows: list, row: dict, out) -> None:
    """Prints a result row as a JSON line, appends it to `rows`, and rewrites `out` (if given)
    with all rows, so a benchmark cut short keeps what it measured."""
    import json

    from qresnet import results

    print(json.dumps(row), flush=True)
    rows.append(row)
    if out:
        results.atomic_write_jsonl(out, rows)
