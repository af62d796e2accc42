"""The published spec site: it builds from the specs alone, every sensor, microphone, board and
box has its page, internal links and anchors resolve, and what it shows is what the code does
(the example messages decode at the pole; the plotted filter is the firmware's)."""

import math
import subprocess
import sys

import pytest

from openpole import paths
from openpole.wire import node_message
from openpole.noise import design
from openpole.spec import build, model, site


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    out = tmp_path_factory.mktemp("site")
    files = build.outputs(specs)
    pages = site.write_site(files, out)
    return specs, files, out, pages


def test_the_command_builds_the_site_with_no_broken_link(tmp_path):
    r = subprocess.run([sys.executable, "-m", "openpole", "spec", "build", "--site", str(tmp_path / "site")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HTML pages in" in r.stdout and (tmp_path / "site" / "README.html").is_file()


def test_every_sensor_mic_board_and_box_has_its_page(built):
    specs, files, out, pages = built
    for stem in specs.sensors:
        page = (out / "sensors" / f"{stem}.html").read_text()
        t = specs.sensors[stem]
        for needle in ("Measures", "Placement", "Calibration", "Wiring", t["datasheet"], "warm-up"):
            assert needle in page, (stem, needle)
        assert (out / "sensors" / f"{stem}.md").is_file()  # the Markdown source beside it
    for stem in specs.mics:
        page = (out / "mics" / f"{stem}.html").read_text()
        assert "Placement" in page and "Calibration" in page and "windscreen" in page
    for bid in specs.boards:
        page = (out / "boards" / f"{bid}.html").read_text()
        assert f'src="{bid}.svg"' in page and "Wiring per sensor" in page
        svg = (out / "boards" / f"{bid}.svg").read_text()
        for role, gpio in specs.boards[bid]["pins"].items():
            assert f">GPIO {gpio}</text>" in svg and f"{role} (" in svg
    for stem, box in specs.boxes.items():
        page = (out / "boxes" / f"{stem}.html").read_text()
        assert "Bill of materials" in page and specs.boards[box["board"]]["name"] in page
        for s in box["sensors"]:
            assert specs.sensors[s]["model"] in page
    index = (out / "README.html").read_text()
    for target in ("payload.html", "quantities.html", "noise.html", "boxes/README.html", "boards/README.html"):
        assert f'href="{target}"' in index
    assert pages == sum(1 for rel in files if rel.startswith("docs/specs/") and rel.endswith(".md"))


def test_internal_links_and_anchors_resolve(built):
    _, _, out, _ = built
    assert site.broken_links(out) == []


def test_the_link_check_catches_a_broken_link_and_a_missing_anchor(built, tmp_path):
    import shutil

    _, _, out, _ = built
    copy = tmp_path / "site"
    shutil.copytree(out, copy)
    page = copy / "payload.html"
    page.write_text(page.read_text().replace("</main>", '<a href="sensors/nope.html">x</a>'
                                              '<a href="boards/README.html#no-such-heading">y</a></main>'))
    (copy / "quantities.html").unlink()
    bad = site.broken_links(copy)
    assert "payload.html: sensors/nope.html" in bad
    assert "payload.html: boards/README.html#no-such-heading (no such anchor)" in bad
    assert any(b.endswith(": quantities.html") for b in bad)


def test_the_example_messages_decode_at_the_pole(built):
    plain, signed = site.example_messages()
    payload_page = built[1]["docs/specs/payload.md"]
    assert plain.hex()[:64] in payload_page and signed.hex()[:64] in payload_page
    m = node_message.decode(plain)
    assert m.node == "pole17-a" and m.boot == 12 and m.seq == 4031
    k = node_message.decode(signed, keys={"pole17-a": site.EXAMPLE_KEY}, require_mac=True)
    assert k.node == "pole17-a"
    with pytest.raises(node_message.Rejected):
        node_message.decode(signed, keys={"pole17-a": bytes(32)}, require_mac=True)


def test_the_plotted_filter_is_within_class_1_tolerance(built):
    """The noise page's table is computed from the firmware constants; every row is inside the band."""
    c = design.constants()
    _, real = design.quantise(design.design())
    g1k = real.gain_db(1000.0)
    for f, (up, dn) in c["class1_tolerance"].items():
        exact = 1000 * 10 ** (round(10 * math.log10(float(f) / 1000)) / 10)
        dev = real.gain_db(exact) - g1k - design.a_weighting_db(exact)
        assert dn <= dev <= up, f
    svg = built[1]["docs/specs/aweighting.svg"]
    assert svg.count("<polyline") == 3 and svg.count("<polygon") == 2
