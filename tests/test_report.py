"""Tables and atomic writes."""
from ptqdet.report import atomic_write_text, mAP_points, markdown_table


def test_markdown_table_aligns_and_formats_numbers():
    text = markdown_table(["model", "mAP", "ratio", "ms"], [["a", 5.93, 0.62, None], ["bb", 32.0, 1.0, 12.34]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header
    assert lines[2].split("|")[2].strip() == "5.9" and lines[2].split("|")[3].strip() == "0.620"
    assert lines[2].split("|")[4].strip() == "-"
    assert lines[3].split("|")[4].strip() == "12.3"


def test_map_points():
    assert mAP_points(0.3251) == 32.5
    assert mAP_points(None) is None


def test_atomic_write_leaves_no_temp_file(tmp_path):
    out = atomic_write_text(tmp_path / "sub" / "r.md", "hello")
    assert out.read_text() == "hello"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.md"]


def test_cpu_name_adds_family_and_model_of_the_first_cpu():
    from ptqdet.report import cpu_name

    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
               "model name\t: AMD EPYC\nflags\t\t: fpu avx512_vnni\n\n"
               "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Other\n")
    assert cpu_name(cpuinfo) == "AMD EPYC (family 25, model 17)"
    assert cpu_name("processor\t: 0\nmodel name\t: Some ARM\n") == "Some ARM"
    assert cpu_name("processor\t: 0\n") == ""
