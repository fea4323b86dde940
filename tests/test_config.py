"""Settings: defaults, the documented file, precedence file < env < CLI, peers, validation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dcmnode import config
from dcmnode.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_node() -> None:
    s = config.load()
    assert (s.node.ae_title, s.dimse.port, s.http.port, s.node.data_dir) == ("DCMNODE", 11112, 8080, "data")
    assert s.store.on_duplicate == "keep"
    assert s.peers == {}


def test_documented_file_lists_every_setting_with_its_default() -> None:
    text = (REPO / "config" / "dcmnode.toml").read_text()
    documented = tomllib.loads(text)
    for section, key, default, help_text in config.describe():
        table = documented
        for part in section.split("."):  # [http.oidc] is a table inside [http]
            table = table.get(part, {})
        documented[section] = table
        assert key in documented.get(section, {}), f"config/dcmnode.toml lacks [{section}] {key}"
        assert documented[section][key] == default, f"[{section}] {key}: file says {documented[section][key]!r}"
        assert help_text and help_text in text, f"[{section}] {key}: its help text is not in the file"
    assert config.load(REPO / "config" / "dcmnode.toml") == config.load()


def test_partial_file_with_peer_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('[peers.PACS1]\nhost = "127.0.0.1"\nport = 4242\n\n[dimse]\nport = 11113\n')
    s = config.load(cfg)
    assert s.peers["PACS1"] == config.Peer("PACS1", "127.0.0.1", 4242)
    assert s.dimse.port == 11113
    assert s.http.port == 8080 and s.node.ae_title == "DCMNODE"


def test_env_overrides_file_and_cli_overrides_env(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('[http]\nport = 9000\n[node]\nae_title = "FROMFILE"\n')
    env = {
        "DCMNODE_HTTP_PORT": "9001",
        "DCMNODE_NODE_AE_TITLE": "FROMENV",
        "DCMNODE_DIMSE_ALLOWED_CALLERS": "CT1, MR2",
        "DCMNODE_STORE_FSYNC": "false",
    }
    s = config.load(cfg, env)
    assert (s.http.port, s.node.ae_title) == (9001, "FROMENV")
    assert s.dimse.allowed_callers == ["CT1", "MR2"] and s.store.fsync is False
    s = config.load(cfg, env, {"http": {"port": 9002}, "node": {"ae_title": None}})
    assert (s.http.port, s.node.ae_title) == (9002, "FROMENV")


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[node]\nae_title = "WAY-TOO-LONG-AE-TITLE"\n', {}, "invalid AE title"),
        ("[dimse]\nport = 70000\n", {}, "0-65535"),
        ("[dimse]\nprot = 1\n", {}, "unknown setting dimse.prot"),
        ('[store]\non_duplicate = "merge"\n', {}, "on_duplicate"),
        ('[http]\nport = "8080"\n', {}, "must be int"),
        ("[peers.PACS1]\nport = 4242\n", {}, "needs host and port"),
        ("[wrong]\nx = 1\n", {}, "unknown section"),
        ("", {"DCMNODE_DIMSE_PORT": "eleven"}, "cannot use 'eleven'"),
        ("", {"DCMNODE_HTTP_NOPE": "1"}, "unknown setting http.nope"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        config.load(cfg, env)


def test_pixel_masks_are_read_from_the_documented_example_and_checked(tmp_path: Path) -> None:
    text = (REPO / "config" / "dcmnode.toml").read_text()
    example = text[text.index("# [[deid.pixel_masks]]") :].split("\n\n")[0]
    cfg = tmp_path / "site.toml"
    cfg.write_text("\n".join(line.removeprefix("# ") for line in example.splitlines()) + "\n[[deid.pixel_masks]]\n"
                   "rectangles = [[1, 2, 3, 4]]\n")  # fmt: skip
    masks = config.load(cfg).deid.pixel_masks
    assert masks == (
        config.PixelMaskRule("Acme Medical", "Sono 5000", 480, 640, ((0, 0, 640, 40), (0, 440, 300, 40))),
        config.PixelMaskRule(None, None, None, None, ((1, 2, 3, 4),)),
    )
    assert config.load().deid.pixel_masks == ()
    for bad, message in [
        ("[[deid.pixel_masks]]\nrows = 480\n", "rectangles must be a list"),
        ("[[deid.pixel_masks]]\nrectangles = [[0, 0, 0, 4]]\n", "rectangles must be a list"),
        ('[[deid.pixel_masks]]\nrectangles = [[0, 0, 1, 1]]\nrows = "480"\n', "rows must be a positive"),
        ('[[deid.pixel_masks]]\nrectangles = [[0, 0, 1, 1]]\nvendor = "x"\n', "unknown keys"),
        ("[deid]\npixel_masks = 3\n", "must be an array of tables"),
    ]:
        cfg.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            config.load(cfg)
