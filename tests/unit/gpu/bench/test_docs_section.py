"""A benchmark's table replaces its own marked section and leaves the rest of the page alone, or is appended."""

from pathlib import Path

from gpu.bench.docs_section import write_marked


def test_the_section_between_its_markers_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Page\n\n<!-- a:begin -->\nold\n<!-- a:end -->\n\nafter\n", encoding="utf-8")
    write_marked(docs, "<!-- a:begin -->", "<!-- a:end -->", "| new |")
    assert docs.read_text(encoding="utf-8") == "# Page\n\n<!-- a:begin -->\n| new |\n<!-- a:end -->\n\nafter\n"


def test_a_page_without_the_markers_gets_the_block_appended(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Page\n\n", encoding="utf-8")
    write_marked(docs, "<!-- b:begin -->", "<!-- b:end -->", "table")
    assert docs.read_text(encoding="utf-8") == "# Page\n\n<!-- b:begin -->\ntable\n<!-- b:end -->\n"
