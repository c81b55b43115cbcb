import pytest

from hpcbench.cpulist import (
    CpuListError,
    format_cpulist,
    format_hex_mask,
    parse_cpulist,
    parse_sysfs_mask,
)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0", (0,)),
        ("0-3", (0, 1, 2, 3)),
        ("0-1,4-5", (0, 1, 4, 5)),
        ("5,1,3", (1, 3, 5)),
        ("0,0,0-1", (0, 1)),
        ("0-17", tuple(range(18))),
        ("1-7:3", (1, 4, 7)),
        (" 2 , 4 ", (2, 4)),
    ],
)
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@pytest.mark.parametrize("text", ["a", "1-", "-1", "1,,2", "4-2", "1:0", "0-3:0", "1.5"])
def test_parse_cpulist_rejects(text):
    with pytest.raises(CpuListError):
        parse_cpulist(text)


@pytest.mark.parametrize(
    ("cpus", "mask"),
    [((0,), "0x1"), ((0, 1, 2, 3), "0xF"), ((4,), "0x10"), ((0, 64), "0x10000000000000001")],
)
def test_hex_mask(cpus, mask):
    assert format_hex_mask(cpus) == mask
    assert parse_sysfs_mask(mask[2:]) == cpus
