"""The cache build's freshness check reads each source's size and modification time once (``stat_all``), in
threads on network file systems, with the same answers as ``Path.exists`` + ``Path.stat`` for every kind of path."""

from __future__ import annotations

import os

from dcase_t6.data.parallel import NETWORK_THREADS, on_network_file_system, stat_all


def reference(paths):
    facts = []
    for path in paths:
        stat = path.stat() if path.exists() else None
        facts.append(None if stat is None else (stat.st_size, stat.st_mtime_ns))
    return facts


def test_stat_all_answers_like_exists_then_stat_in_input_order_with_any_number_of_threads(tmp_path):
    paths = []
    for number in range(2500):
        path = tmp_path / f"{number % 7}" / f"{number}.wav"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * (number % 13))
        os.utime(path, ns=(0, 1_000_000_000 * number + 17))
        paths.append(path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a symbolic-link loop: ELOOP
    (tmp_path / "plain").write_bytes(b"")
    odd = [tmp_path / "missing.wav", tmp_path / "loop", tmp_path / "plain" / "below.wav", tmp_path / "gone" / "x.wav"]
    paths[1200:1200] = odd
    expected = reference(paths)
    assert expected[1200:1204] == [None] * 4 and expected[5] == (5, 5_000_000_017)
    for threads in (1, 3, NETWORK_THREADS, None):
        assert stat_all(paths, threads=threads) == expected
    assert stat_all([]) == []


def test_errors_other_than_an_absent_path_are_not_read_as_a_missing_file(tmp_path):
    too_long = tmp_path / ("x" * 300)  # ENAMETOOLONG: Path.exists raises it too
    for threads in (1, NETWORK_THREADS):
        try:
            stat_all([tmp_path, *[too_long] * 3000], threads=threads)
        except OSError as err:
            assert err.errno == 36
        else:
            raise AssertionError("a name too long was taken for a missing file")


MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
server:/export /mnt/data nfs4 rw,vers=4.2 0 0
server:/export/local /mnt/data/scratch ext4 rw 0 0
//nas/share /mnt/nas\\040box cifs rw 0 0
lustre@tcp:/fs /lustre lustre rw 0 0
sshfs#me@host: /home/me/remote fuse.sshfs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


def test_network_file_systems_are_told_from_local_ones_by_the_longest_mount_point():
    assert on_network_file_system("/mnt/data/clotho/a.wav", MOUNTS)
    assert not on_network_file_system("/mnt/data/scratch/a.wav", MOUNTS)  # a local disk mounted below NFS
    assert not on_network_file_system("/mnt/database/a.wav", MOUNTS)  # a name sharing the prefix is not below it
    assert on_network_file_system("/mnt/nas box/a.wav", MOUNTS)  # \040 is a space in the mount table
    assert on_network_file_system("/lustre/project/wavcaps", MOUNTS)
    assert on_network_file_system("/home/me/remote/x.flac", MOUNTS)
    assert not on_network_file_system("/tmp/x.wav", MOUNTS) and not on_network_file_system("/home/me/x", MOUNTS)
    assert not on_network_file_system("/anything", "")  # an unreadable or empty table: local
