"""Contact sheets: every image linked by a working relative path, text escaped, images grouped."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image, PngImagePlugin

from atelier.campaign.contact_sheet import SHEET_MARKER, build_contact_sheet, collect_sections
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError


class _SheetParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.tags: set[str] = set()
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"])
        if tag in ("link", "script") or (tag == "a" and values.get("href", "").startswith("http")):
            self.links.append(tag)
        self._in_heading = tag == "h2"

    def handle_endtag(self, tag):
        self._in_heading = False

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data)


def parse(html_path: Path) -> _SheetParser:
    parser = _SheetParser()
    parser.feed(html_path.read_text(encoding="utf-8"))
    return parser


def linked_files(html_path: Path) -> list[Path]:
    return [(html_path.parent / unquote(src)).resolve() for src in parse(html_path).images]


def save_png(path: Path, color: tuple[int, int, int], parameters: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    Image.new("RGB", (64, 80), color).save(path, pnginfo=info)


def infotext(prompt: str, seed: int, negative: str = "blurry") -> str:
    return f"{prompt}\nNegative prompt: {negative}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x80"


@pytest.fixture
def batch(tmp_path) -> Path:
    folder = tmp_path / "batch"
    records = []
    for sku, color in (("JKT-01", (200, 160, 30)), ("BAG-07", (40, 80, 160))):
        for scene in ("forest trail", "city at dusk"):
            for seed in (1, 2):
                file = f"{sku}/{scene.replace(' ', '_')}_{seed}.png"
                save_png(folder / file, color)
                records.append(
                    {
                        "file": file,
                        "sku": sku,
                        "scene": scene,
                        "seed": seed,
                        "prompt": f"studio photo of {sku}, {scene}",
                        "negative_prompt": "lowres",
                        "params": {"steps": 25, "cfg": 6.5},
                    }
                )
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n\n")
    return folder


def test_a_batch_sheet_links_every_image_with_a_relative_path(batch):
    html_path = build_contact_sheet(batch)
    assert html_path == batch / "index.html"
    sources = parse(html_path).images
    assert all(not src.startswith(("/", "file:", "http")) for src in sources)
    expected = {path.resolve() for path in batch.rglob("*.png")}
    assert len(expected) == 8
    linked = linked_files(html_path)
    assert set(linked) == expected
    assert len(linked) == len(expected)
    assert all(path.is_file() for path in linked)


def test_a_batch_is_grouped_by_sku_then_scene(batch):
    sections = collect_sections(batch)
    assert [section.title for section in sections] == ["JKT-01", "BAG-07"]
    for section in sections:
        assert [group.title for group in section.groups] == ["forest trail", "city at dusk"]
        for group in section.groups:
            assert [image.seed for image in group.images] == ["1", "2"]
            assert {image.sku for image in group.images} == {section.title}
    html = build_contact_sheet(batch).read_text()
    assert parse(batch / "index.html").headings == ["JKT-01", "BAG-07"]
    assert "8 images · 2 SKUs · 2 scenes" in html
    assert "studio photo of JKT-01, forest trail" in html
    assert "seed 2" in html


def test_the_sheet_works_offline(batch):
    parser = parse(build_contact_sheet(batch, title="Spring drop"))
    assert parser.links == []
    assert "style" in parser.tags
    assert "http" not in (batch / "index.html").read_text()


def test_all_text_is_escaped(tmp_path):
    folder = tmp_path / "outputs"
    save_png(folder / "a.png", (10, 10, 10), infotext('a <script>alert("x")</script> & "hood"', 5))
    html_path = build_contact_sheet(folder, title="<b>Drop</b>")
    html = html_path.read_text()
    assert "<script>" not in html
    assert "<b>Drop</b>" not in html
    assert "&lt;b&gt;Drop&lt;/b&gt;" in html
    assert "a &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;hood&quot;" in html


def test_loose_outputs_are_grouped_by_the_prompt_in_their_parameters(tmp_path):
    folder = tmp_path / "outputs"
    save_png(folder / "b_1.png", (1, 1, 1), infotext("a yellow windbreaker", 11))
    save_png(folder / "a_2.png", (2, 2, 2), infotext("a blue backpack\non a rock", 12))
    save_png(folder / "b_2.png", (3, 3, 3), infotext("a yellow windbreaker", 13, negative="other"))
    save_png(folder / "no_params.png", (4, 4, 4))
    sections = collect_sections(folder)
    assert [section.title for section in sections] == ["Prompt 1", "Prompt 2", "No prompt recorded"]
    prompts = [{image.prompt for image in section.groups[0].images} for section in sections]
    assert prompts == [{"a blue backpack\non a rock"}, {"a yellow windbreaker"}, {""}]
    assert [image.seed for image in sections[1].groups[0].images] == ["11", "13"]
    assert sections[1].groups[0].images[0].negative_prompt == "blurry"
    html = build_contact_sheet(folder).read_text()
    assert "<li>Sampler: Euler a</li>" in html
    assert "<li>Size: 64x80</li>" in html
    # The two windbreaker images have different negative prompts, so none is shown for the group.
    assert html.count('class="negative"') == 1


def test_training_samples_are_found_and_ordered_by_step(tmp_path):
    run = tmp_path / "run"
    for step in (1000, 200, 50):
        save_png(
            run / "samples" / f"sample_{step:d}_0.png", (step % 255, 0, 0), infotext("photo of sks jacket", 7)
        )
    (run / "model.safetensors").write_bytes(b"\0")
    sections = collect_sections(run)
    assert len(sections) == 1
    names = [image.path.name for image in sections[0].groups[0].images]
    assert names == ["sample_50_0.png", "sample_200_0.png", "sample_1000_0.png"]
    html_path = build_contact_sheet(run)
    assert parse(html_path).images == [f"samples/{name}" for name in names]


def test_odd_file_names_and_a_page_elsewhere_still_link(tmp_path):
    folder = tmp_path / "outputs"
    save_png(folder / "look #1 & more?.png", (9, 9, 9), infotext("x", 1))
    html_path = build_contact_sheet(folder, out_html=tmp_path / "pages" / "sheet.html")
    (source,) = parse(html_path).images
    assert source.startswith("../outputs/")
    assert "#" not in source and " " not in source and "?" not in source
    assert linked_files(html_path) == [(folder / "look #1 & more?.png").resolve()]


def test_a_png_grid_is_written_and_not_mistaken_for_an_image_next_time(batch, tmp_path):
    grid = tmp_path / "outputs" / "grid.png"
    save_png(tmp_path / "outputs" / "one.png", (50, 60, 70), infotext("a jacket", 3))
    save_png(tmp_path / "outputs" / "two.png", (70, 60, 50), infotext("a jacket", 4))
    build_contact_sheet(tmp_path / "outputs", png_path=grid, title="Grid")
    with Image.open(grid) as image:
        assert image.format == "PNG"
        assert image.width > 2 * 64 and image.height > 80
        assert SHEET_MARKER in image.text
    build_contact_sheet(tmp_path / "outputs")
    linked = linked_files(tmp_path / "outputs" / "index.html")
    assert grid.resolve() not in linked
    assert len(linked) == 2
    build_contact_sheet(batch, png_path=tmp_path / "batch-grid.png")
    assert (tmp_path / "batch-grid.png").is_file()


def test_a_missing_manifest_file_shows_a_placeholder(batch):
    (batch / "JKT-01" / "forest_trail_1.png").unlink()
    html = build_contact_sheet(batch).read_text()
    assert "missing file" in html
    assert len(parse(batch / "index.html").images) == 7


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        ("{not json", AtelierError, "manifest.jsonl line 2 is not valid JSON"),
        ('{"sku": "A"}', AtelierError, "manifest.jsonl line 2 has no 'file'"),
        ('{"file": "../secret.png"}', UnsafeFileError, "line 2: '../secret.png' is outside"),
    ],
)
def test_manifest_problems_name_the_line(tmp_path, line, error, message):
    save_png(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "manifest.jsonl").write_text('{"file": "a.png"}\n' + line + "\n")
    with pytest.raises(error, match=message):
        build_contact_sheet(tmp_path)


def test_empty_and_missing_folders_are_errors(tmp_path):
    with pytest.raises(AtelierError, match="no images found"):
        build_contact_sheet(tmp_path)
    with pytest.raises(NotFoundError, match="folder not found"):
        build_contact_sheet(tmp_path / "nope")
