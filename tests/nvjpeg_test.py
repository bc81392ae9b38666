"""nvjpeg's host-side bookkeeping (the GPU decoding itself needs PyTorch with CUDA: not in CI)."""

import threading

from qresnet import nvjpeg


class _Copy:
    """A device copy that is ready when told; records waits."""

    def __init__(self):
        self.ready, self.waited = False, False

    def is_ready(self):
        return self.ready

    def block_until_ready(self):
        self.waited = self.waited or not self.ready
        self.ready = True
        return self


def _held():
    return [source for _, source in nvjpeg._local.__dict__.get("held", [])]


def test_a_decoded_batch_is_held_until_its_copy_is_ready_and_at_most_most_are_held():
    def body():
        copies = [_Copy() for _ in range(4)]
        nvjpeg._hold(copies[0], "b0", most=3)
        nvjpeg._hold(copies[1], "b1", most=3)
        assert _held() == ["b0", "b1"]  # neither copy done: torch must not reuse their memory
        copies[0].ready = True
        nvjpeg._hold(copies[2], "b2", most=3)
        assert _held() == ["b1", "b2"] and not copies[0].waited
        nvjpeg._hold(copies[3], "b3", most=2)  # over the bound: waits for the oldest copy
        assert _held() == ["b2", "b3"] and copies[1].waited

    errors = []

    def run():
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)  # a decoding thread's own list, as in the pipeline
    t.start()
    t.join()
    if errors:
        raise errors[0]
    assert _held() == []  # not this thread's
