"""The DNC file reader: the same verdict as SQL `dnc_normalize` on every line, at any speed."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.dnc.lines import LineScan, e164_lines, is_content, normalize

# Lines of every shape the importer meets, good and bad (and ones that look alike).
CORPUS = [
    "+12025550143",
    "2025550143",
    "12025550143",
    "1-202-555-0143",
    "(202) 555-0143",
    " 202.555.0143 ",
    '"2025550143"',
    "202,5550143",
    ' "202" , "5550143" ,extra,fields',
    "202 , 5550143",
    "2025550143,Ann,Smith",
    "+12025550143,Ann",
    "+447700900123",
    "+33612345678",
    "+4477009",
    "+1202555014",
    "+11025550143",
    "+12021550143",
    "1025550143",
    "2021550143",
    "12025550143999",
    "+1 202 555 0143",
    "+1-202-555-0143",
    "+0123456789",
    "+123",
    "not a number",
    "",
    "   ",
    "#2025550143",
    "2025550143 # trailing comment",
    "202\t555\t0143",
    "٢٠٢٥٥٥٠١٤٣",  # Arabic-Indic digits: not [0-9]
    "２０２５５５０１４３",  # full-width digits
    "202,555014",
    "2O25550143",
    "+1(202)555-0143",
    "1 (202) 555-0143 x12",
]


async def test_the_reader_normalises_exactly_like_the_sql_function(pg_pool):
    expected = await pg_pool.fetch(
        "SELECT raw, dnc_normalize(raw) AS number FROM unnest($1::text[]) AS raw", CORPUS
    )
    assert [(r["raw"], normalize(r["raw"])) for r in expected] == [
        (r["raw"], r["number"]) for r in expected
    ]


def test_blank_comment_and_header_lines_are_not_content():
    assert not is_content("", 5) and not is_content("   ", 5) and not is_content(" # x", 5)
    assert not is_content("phone,name", 1) and is_content("phone,name", 2)
    assert is_content("tel 2025550143", 1)


def test_registry_blocks_take_the_fast_path_and_give_what_the_careful_path_gives():
    e164 = "".join(f"+1202555{n:04d}\n" for n in range(1000)).encode()
    national = "".join(f"202555{n:04d}\n" for n in range(1000)).encode()
    for block in (e164, national):
        fast, careful = LineScan(line_no=1), LineScan(line_no=1)
        assert fast.block(block) == careful._line_by_line(block) == e164
        assert (fast.line_no, fast.lines) == (careful.line_no, careful.lines) == (1001, 1000)


def test_a_block_with_one_odd_line_is_read_line_by_line():
    scan = LineScan()
    out = scan.block(b"phone\r\n+12025550101\r\n(202) 555-0102\r\nbad\r\n2025550103\r\n")
    assert out == b"+12025550101\n+12025550102\n+12025550103\n"
    assert (scan.line_no, scan.lines, scan.rejected, scan.rejected_lines) == (5, 4, 1, [(4, "bad")])


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_line_numbers_run_across_chunks_and_nothing_is_sent_after_a_bad_line():
    lines = [f"+1202555{n:04d}" for n in range(100)]
    lines[37] = "oops"
    lines[90] = "+1202"
    data = "\n".join(lines).encode()  # and no newline at the end
    scan = LineScan()
    sent = [b async for b in e164_lines(chunks_of(data, 50), scan)]
    assert scan.rejected_lines == [(38, "oops"), (91, "+1202")]
    assert (scan.lines, scan.rejected) == (100, 2)
    numbers = b"".join(sent).split()
    assert numbers == [n.encode() for n in lines[:37]][: len(numbers)]  # only lines before 38


async def test_a_whole_file_read_in_odd_chunks_gives_every_number_once():
    data = "".join(f"202555{n:04d}\n" for n in range(5000)).encode()
    scan = LineScan()
    out = b"".join([b async for b in e164_lines(chunks_of(data, 4093), scan)])
    assert out.split() == [f"+1202555{n:04d}".encode() for n in range(5000)]
    assert (scan.line_no, scan.lines, scan.rejected) == (5000, 5000, 0)
