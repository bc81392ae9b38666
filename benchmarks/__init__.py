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


def warm_up(fn, call, *, max_calls: int = 3) -> int:
    """Runs `call()` (one call of the jitted `fn`, to completion) until a call compiles nothing.

    A program whose output carries a mesh's sharding where its input had none compiles a second
    time on its second call (the trainer's epoch program does, fed a state made outside the mesh),
    so timing from the second call would time that compilation too. Returns the calls made.
    """
    for n in range(1, max_calls + 1):
        before = compiled_count(fn)
        call()
        if compiled_count(fn) == before:
            return n
    raise RuntimeError(f"{fn} compiled on each of {max_calls} calls: its inputs' types or shardings keep changing")


def compiled_count(fn) -> int:
    """How many programs the jitted `fn` has compiled (jax keeps no public count; `_cache_size` is it)."""
    return fn._cache_size()


def check_compiled(fn, expected: int, what: str) -> None:
    """Raises if `fn` compiled anything since it had `expected` programs: `what` (a timing) is void."""
    if compiled_count(fn) != expected:
        raise RuntimeError(f"{what} included a compilation ({compiled_count(fn)} programs, {expected} before)")


def epoch_mesh():
    """The trainer's mesh on the first device only: the benchmarks time one accelerator."""
    import jax

    return jax.sharding.Mesh(jax.devices()[:1], ("data",))


def on_mesh(tree, mesh):
    """`tree` replicated on `mesh`, as the trainer's epoch program returns its state: fed a state
    made outside the mesh, that program would compile a second time (see `warm_up`)."""
    import jax

    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
