"""``prepare``, ``verify`` and ``download`` on tiny archives built in each data set's real layout.

Downloads come from an HTTP server on 127.0.0.1 started by the test (with ``Range`` support and
a switch that cuts the connection mid-file); nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import DataError, get_spec, load_split
from benchmark.data import __main__ as cli
from benchmark.data.fetch import DOWNLOADS_DIR, download
from benchmark.data.install import STAGING_PREFIX, prepare
from benchmark.data.manifest import MANIFEST_DIR
from benchmark.data.spec import DatasetSpec
from benchmark.data.transfer import fetch_url, partial_path
from benchmark.data.verify import verify

pytestmark = pytest.mark.filterwarnings("ignore:.*incomplete data")

OFFICE31_CLASSES = ["back_pack", "bike", "calculator"]
OFFICE_HOME_CLASSES = ["Alarm_Clock", "Desk_Lamp", "TV"]
VISDA_CLASSES = ["aeroplane", "train", "truck"]
DOMAINNET_CLASSES = {"aircraft_carrier": 0, "alarm_clock": 2, "zigzag": 344}
PER_CLASS = 2


def image_bytes(seed: int, fmt: str = "JPEG") -> bytes:
    """A tiny random image file's bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(int(rng.integers(8, 17)), int(rng.integers(8, 17)), 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive (``mode`` w or w:gz) holding ``members`` (path -> content)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive holding ``members`` (path -> content)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return out.getvalue()


def office31_members() -> dict[str, bytes]:
    """``domain_adaptation_images.tar.gz``: ``<domain>/images/<class>/frame_NNNN.jpg``."""
    return {
        f"{domain}/images/{cls}/frame_{i + 1:04d}.jpg": image_bytes(d * 100 + c * 10 + i)
        for d, domain in enumerate(("amazon", "dslr", "webcam"))
        for c, cls in enumerate(OFFICE31_CLASSES)
        for i in range(PER_CLASS)
    }


def office_home_members() -> dict[str, bytes]:
    """``OfficeHomeDataset_10072016.zip``: a wrapper folder, four domains (one with a space), extras."""
    members = {
        f"OfficeHomeDataset_10072016/{domain}/{cls}/{i + 1:05d}.jpg": image_bytes(d * 100 + c * 10 + i)
        for d, domain in enumerate(("Art", "Clipart", "Product", "Real World"))
        for c, cls in enumerate(OFFICE_HOME_CLASSES)
        for i in range(PER_CLASS)
    }
    members["OfficeHomeDataset_10072016/ImageInfo.csv"] = b"image,width,height\n"
    members["__MACOSX/OfficeHomeDataset_10072016/._Art"] = b"junk"
    return members


def visda_members(split: str) -> dict[str, bytes]:
    """``train.tar`` (PNG renderings) or ``validation.tar`` (JPEG photos), each with ``image_list.txt``."""
    fmt, ext = ("PNG", "png") if split == "train" else ("JPEG", "jpg")
    members = {
        f"{split}/{cls}/{split}_{c}_{i}.{ext}": image_bytes(c * 10 + i + (500 if split == "train" else 0), fmt)
        for c, cls in enumerate(VISDA_CLASSES)
        for i in range(PER_CLASS)
    }
    members[f"{split}/image_list.txt"] = "\n".join(f"{n.split('/', 1)[1]} 0" for n in members).encode()
    return members


def domainnet_files() -> dict[str, bytes]:
    """``clipart.zip`` plus the two split lists of the clipart domain."""
    images = {
        f"clipart/{cls}/clipart_{label:03d}_{i:06d}.jpg": image_bytes(label * 10 + i)
        for cls, label in DOMAINNET_CLASSES.items()
        for i in range(3)
    }
    lines = [(path, DOMAINNET_CLASSES[path.split("/")[1]]) for path in images]
    train = "".join(f"{p} {label}\n" for p, label in lines if not p.endswith("2.jpg"))
    test = "".join(f"{p} {label}\n" for p, label in lines if p.endswith("2.jpg"))
    return {"clipart.zip": zip_bytes(images), "clipart_train.txt": train.encode(), "clipart_test.txt": test.encode()}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def with_counts(spec: DatasetSpec, counts: dict[str, dict[str, int]]) -> DatasetSpec:
    """The spec with the image counts of the fake archives, so a complete fake tree verifies clean."""
    facts = {name: dataclasses.replace(f, images=counts.get(name, f.images)) for name, f in spec.domain_facts.items()}
    return dataclasses.replace(spec, domain_facts=facts)


def leftovers(data_root: Path) -> list[Path]:
    """Temporary extraction folders still in the data root."""
    return list(data_root.glob(f"{STAGING_PREFIX}*"))


# ----------------------------------------------------------------------------- prepare + verify


def test_prepare_office31_tar_gz(tmp_path: Path) -> None:
    archive = write(tmp_path / "domain_adaptation_images.tar.gz", tar_bytes(office31_members(), "w:gz"))
    data = tmp_path / "data"
    spec = with_counts(get_spec("office31"), {d: {"all": 3 * PER_CLASS} for d in ("amazon", "dslr", "webcam")})
    installed = prepare(spec, [archive], data)
    assert sorted(installed) == ["amazon", "dslr", "webcam"]
    assert (data / "office31" / "amazon" / "images" / "back_pack" / "frame_0001.jpg").is_file()
    assert verify(spec, data).ok
    split = load_split("office31", domain="webcam", setting="oda", data_root=data, resolution=16, cache=False)
    assert len(split.test) == 3 * PER_CLASS
    assert archive.is_file() and not leftovers(data)


def test_prepare_office_home_zip_keeps_real_world_and_skips_extras(tmp_path: Path) -> None:
    archive = write(tmp_path / "OfficeHomeDataset_10072016.zip", zip_bytes(office_home_members()))
    data = tmp_path / "data"
    counts = {d: {"all": 3 * PER_CLASS} for d in ("Art", "Clipart", "Product", "RealWorld")}
    spec = with_counts(get_spec("office_home"), counts)
    assert sorted(prepare(spec, [archive], data)) == ["Art", "Clipart", "Product", "Real World"]
    root = data / "office_home"
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST_DIR, "Art", "Clipart", "Product", "Real World"]
    report = verify(spec, data)
    assert report.ok, report.lines()
    assert [p.found for p in report.parts] == [6, 6, 6, 6]
    split = load_split("office_home", domain="RealWorld", setting="oda", data_root=data, resolution=16, cache=False)
    assert sorted(set(split.test.classes.tolist())) == sorted(spec.classes.index(c) for c in OFFICE_HOME_CLASSES)


def test_prepare_visda_and_domainnet_archives_fetched_by_hand(tmp_path: Path) -> None:
    data = tmp_path / "data"
    train = write(tmp_path / "train.tar", tar_bytes(visda_members("train")))
    validation = write(tmp_path / "validation.tar", tar_bytes(visda_members("validation")))
    visda = with_counts(get_spec("visda2017"), {"synthetic": {"all": 6}, "real": {"all": 6}})
    assert sorted(prepare(visda, [train, validation], data)) == ["train", "validation"]
    assert (data / "visda2017" / "validation" / "train").is_dir(), "the class folder 'train' stays in validation/"
    assert verify(visda, data).ok

    files = {name: write(tmp_path / "dn" / name, content) for name, content in domainnet_files().items()}
    domainnet = dataclasses.replace(get_spec("domainnet"), download=[])
    domainnet = with_counts(domainnet, {"clipart": {"adapt": 6, "test": 3}})
    prepare(domainnet, list(files.values()), data)
    report = verify(domainnet, data, domains=["clipart"])
    assert report.ok, report.lines()
    split = load_split("domainnet", domain="clipart", setting="oda", data_root=data, resolution=16, cache=False)
    assert len(split.adapt) == 4 and len(split.test) == 3


def test_verify_names_missing_and_corrupt_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    archive = write(tmp_path / "OfficeHomeDataset_10072016.zip", zip_bytes(office_home_members()))
    data = tmp_path / "data"
    spec = with_counts(get_spec("office_home"), {d: {"all": 6} for d in ("Art", "Clipart", "Product", "RealWorld")})
    prepare(spec, [archive], data)
    art = data / "office_home" / "Art"
    (art / "TV" / "00001.jpg").unlink()
    (art / "Desk_Lamp" / "00002.jpg").write_bytes(b"this is not a jpeg")
    truncated = art / "Alarm_Clock" / "00001.jpg"
    truncated.write_bytes(image_bytes(1)[:-40])

    report = verify(spec, data, domains=["Art"])
    assert not report.ok
    (part,) = report.parts
    assert part.found == 5 and part.expected == 6
    assert part.missing == ["office_home/Art/TV/00001.jpg"]
    assert [p for p, _ in part.unreadable] == ["office_home/Art/Desk_Lamp/00002.jpg"]
    assert "office_home/Art/Alarm_Clock/00001.jpg" in part.changed

    decoded = verify(spec, data, domains=["Art"], decode=True)
    assert sorted(p for p, _ in decoded.parts[0].unreadable) == [
        "office_home/Art/Alarm_Clock/00001.jpg",
        "office_home/Art/Desk_Lamp/00002.jpg",
    ]
    assert verify(spec, data, domains=["Clipart"]).ok

    assert cli.main(["verify", "office_home", "--data-root", str(data), "--domains", "Art"]) == 1
    out = capsys.readouterr().out
    assert "1 file(s) missing:\n    office_home/Art/TV/00001.jpg" in out
    assert "office_home/Art/Desk_Lamp/00002.jpg: cannot identify image file" in out
    assert "[count] office_home/Art all: 5 images (expected 2427)" in out
    assert cli.main(["check", "office_home", "--data-root", str(data), "--domains", "Art", "--decode"]) == 1
    assert "decoded every image" in capsys.readouterr().out


def test_verify_lists_layout_names_missing_listed_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = {name: write(tmp_path / name, content) for name, content in domainnet_files().items()}
    spec = with_counts(dataclasses.replace(get_spec("domainnet"), download=[]), {"clipart": {"adapt": 6, "test": 3}})
    prepare(spec, list(files.values()), data)
    (data / "domainnet" / "clipart" / "zigzag" / "clipart_344_000000.jpg").unlink()
    report = verify(spec, data, domains=["clipart"])
    assert [p.missing for p in report.parts] == [["domainnet/clipart/zigzag/clipart_344_000000.jpg"], []]
    assert not report.ok


def test_verify_without_data_and_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["verify", "office31", "--data-root", str(tmp_path)]) == 1
    assert "Office-31 not found" in capsys.readouterr().out
    assert cli.main(["verify", "synthetic"]) == 0


def test_prepare_refuses_to_overwrite_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    archive = write(tmp_path / "domain_adaptation_images.tar.gz", tar_bytes(office31_members(), "w:gz"))
    data = tmp_path / "data"
    assert cli.main(["prepare", "office31", "--archive", str(archive), "--data-root", str(data)]) == 0
    marker = write(data / "office31" / "amazon" / "images" / "bike" / "extra.jpg", image_bytes(7))
    assert cli.main(["prepare", "office31", "--archive", str(archive), "--data-root", str(data)]) == 1
    assert "Pass --overwrite" in capsys.readouterr().err
    assert marker.exists()
    assert cli.main(["prepare", "office31", "--archive", str(archive), "--data-root", str(data), "--overwrite"]) == 0
    assert not marker.exists() and not leftovers(data)

    amazon_only = {k: v for k, v in office31_members().items() if k.startswith("amazon/") and "0001" in k}
    other = write(tmp_path / "amazon_again.tar", tar_bytes(amazon_only))
    spec = with_counts(get_spec("office31"), {"amazon": {"all": 3}, "dslr": {"all": 6}, "webcam": {"all": 6}})
    assert prepare(spec, [other], data, overwrite=True) == ["amazon"]
    report = verify(spec, data)
    assert report.ok, "the first archive's record of amazon/ was replaced, so nothing is reported missing"


def test_prepare_rejects_foreign_and_corrupt_archives(tmp_path: Path) -> None:
    data = tmp_path / "data"
    visda = write(tmp_path / "train.tar", tar_bytes(visda_members("train")))
    with pytest.raises(DataError, match=r"holds none of the parts of Office-Home.*top level holds: train"):
        prepare(get_spec("office_home"), [visda], data)
    broken = write(tmp_path / "OfficeHomeDataset_10072016.zip", zip_bytes(office_home_members())[:-300])
    with pytest.raises(DataError, match="cannot extract .*OfficeHomeDataset_10072016.zip"):
        prepare(get_spec("office_home"), [broken], data)
    assert not (data / "office_home").exists() and not leftovers(data)
    with pytest.raises(DataError, match="not found"):
        prepare(get_spec("office_home"), [tmp_path / "nope.zip"], data)


def test_prepare_checks_the_size_recorded_in_the_spec(tmp_path: Path) -> None:
    """The real DomainNet spec records the size of clipart.zip: a different file is refused before extraction."""
    fake = write(tmp_path / "clipart.zip", domainnet_files()["clipart.zip"])
    with pytest.raises(DataError, match=r"clipart.zip has \d+ bytes, .*records 1270909081"):
        prepare(get_spec("domainnet"), [fake], tmp_path / "data")
    assert not (tmp_path / "data" / "domainnet").exists()


# ----------------------------------------------------------------------------- download


class Server:
    """Files served over HTTP on 127.0.0.1, with ``Range`` support, a log and failure switches."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cuts: dict[str, list[int]] = {}
        self.ignore_range = False
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                wanted = self.headers.get("Range")
                served.requests.append((name, wanted))
                data = served.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if wanted and not served.ignore_range:
                    start = int(wanted.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cuts = served.cuts.get(name)
                self.wfile.write(body[: cuts.pop(0)] if cuts else body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def visda_server() -> Iterator[Server]:
    files = {"train.tar": tar_bytes(visda_members("train")), "validation.tar": tar_bytes(visda_members("validation"))}
    with Server(files) as server:
        yield server


def visda_spec(server: Server, corrupt: str = "") -> DatasetSpec:
    """The VisDA spec downloading from the test server, with the archives' true sizes and sha256."""
    entries = []
    for name, domain in (("train.tar", "synthetic"), ("validation.tar", "real")):
        data = server.files[name]
        sha = hashlib.sha256(data).hexdigest() if name != corrupt else "0" * 64
        entries.append({"url": f"{server.url}/{name}", "domain": domain, "size": len(data), "sha256": sha})
    spec = dataclasses.replace(get_spec("visda2017"), download=entries)
    return with_counts(spec, {"synthetic": {"all": 6}, "real": {"all": 6}})


def test_download_complete_then_skipped(visda_server: Server, tmp_path: Path) -> None:
    spec = visda_spec(visda_server)
    root = download(spec, tmp_path, backoff=0)
    assert root == tmp_path / "visda2017"
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST_DIR, "train", "validation"]
    assert verify(spec, tmp_path).ok
    assert not (tmp_path / DOWNLOADS_DIR).exists(), "archives are deleted after extraction"
    served = len(visda_server.requests)
    download(spec, tmp_path, backoff=0)
    assert len(visda_server.requests) == served, "a second run fetches nothing"


def test_download_resumes_after_the_connection_drops(visda_server: Server, tmp_path: Path) -> None:
    size = len(visda_server.files["validation.tar"])
    visda_server.cuts["validation.tar"] = [size // 2]
    spec = visda_spec(visda_server)
    download(spec, tmp_path, domains=["real"], backoff=0)
    assert visda_server.requests == [("validation.tar", None), ("validation.tar", f"bytes={size // 2}-")]
    assert verify(spec, tmp_path, domains=["real"]).ok
    assert not (tmp_path / "visda2017" / "train").exists()


def test_download_resumes_a_partial_file_from_an_earlier_run(visda_server: Server, tmp_path: Path) -> None:
    data = visda_server.files["train.tar"]
    write(partial_path(tmp_path / DOWNLOADS_DIR / "visda2017" / "train.tar"), data[:1000])
    spec = visda_spec(visda_server)
    download(spec, tmp_path, domains=["synthetic"], keep_archives=True, backoff=0)
    assert visda_server.requests == [("train.tar", "bytes=1000-")]
    assert (tmp_path / DOWNLOADS_DIR / "visda2017" / "train.tar").read_bytes() == data
    assert verify(spec, tmp_path, domains=["synthetic"]).ok


def test_download_restarts_when_the_server_ignores_range(visda_server: Server, tmp_path: Path) -> None:
    data = visda_server.files["train.tar"]
    target = tmp_path / "train.tar"
    write(partial_path(target), b"x" * 1000)
    visda_server.ignore_range = True
    fetch_url(f"{visda_server.url}/train.tar", target, size=len(data), backoff=0)
    assert target.read_bytes() == data and not partial_path(target).exists()


def test_download_checksum_mismatch_fails_cleanly(visda_server: Server, tmp_path: Path) -> None:
    spec = visda_spec(visda_server, corrupt="validation.tar")
    with pytest.raises(DataError, match="sha256 .* does not match 0000.*nothing was installed"):
        download(spec, tmp_path, domains=["real"], backoff=0)
    assert not (tmp_path / "visda2017").exists(), "no half-extracted data set"
    assert not leftovers(tmp_path)
    assert not list((tmp_path / DOWNLOADS_DIR).rglob("validation.tar*")), "the bad file is deleted"


def test_download_gives_up_after_retries_and_keeps_the_partial_file(visda_server: Server, tmp_path: Path) -> None:
    spec = visda_spec(visda_server)
    visda_server.cuts["validation.tar"] = [100, 0, 0, 0]
    with pytest.raises(DataError, match=r"failed after 2 retries.*100 bytes fetched so far are kept in .*\.part; run"):
        download(spec, tmp_path, domains=["real"], retries=2, backoff=0)
    assert not (tmp_path / "visda2017").exists()
    download(spec, tmp_path, domains=["real"], backoff=0)
    assert visda_server.requests[-1] == ("validation.tar", "bytes=100-")
    assert verify(spec, tmp_path, domains=["real"]).ok


def test_download_refuses_missing_and_different_files(visda_server: Server, tmp_path: Path) -> None:
    spec = visda_spec(visda_server)
    spec = dataclasses.replace(spec, download=[{**spec.download[1], "url": f"{visda_server.url}/gone.tar"}])
    with pytest.raises(DataError, match="HTTP 404"):
        download(spec, tmp_path, backoff=0)
    visda_server.files["gone.tar"] = b"short"
    with pytest.raises(DataError, match=r"announces 5 bytes but the data set spec records \d+"):
        download(spec, tmp_path, backoff=0)
    assert not (tmp_path / "visda2017").exists()


def test_download_domainnet_lists_and_zip(tmp_path: Path) -> None:
    files = domainnet_files()
    with Server(files) as server:
        entries = [
            {
                "url": f"{server.url}/{name}",
                "domain": "clipart",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            for name, data in files.items()
        ]
        spec = with_counts(
            dataclasses.replace(get_spec("domainnet"), download=entries), {"clipart": {"adapt": 6, "test": 3}}
        )
        download(spec, tmp_path, domains=["clipart"], backoff=0)
    root = tmp_path / "domainnet"
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST_DIR, "clipart", "clipart_test.txt", "clipart_train.txt"]
    assert verify(spec, tmp_path, domains=["clipart"]).ok


def test_download_command_line(
    visda_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    spec = visda_spec(visda_server)
    monkeypatch.setattr(cli, "get_spec", lambda name: spec)
    assert cli.main(["download", "visda2017", "--data-root", str(tmp_path), "--domains", "real"]) == 0
    out = capsys.readouterr().out
    assert "validation.tar: " in out and "(checked: sha256, size)" in out and "verify visda2017" in out
    assert cli.main(["download", "visda2017", "--data-root", str(tmp_path), "--domains", "real"]) == 0
    assert "already present" in capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main(["download", "office31", "--data-root", str(tmp_path)]) == 1
    assert "prepare office31 --archive FILE" in capsys.readouterr().out


@pytest.mark.parametrize(
    "entry,message",
    [
        ('{url: "http://x/a.zip", size: -3}', "size must be a positive byte count"),
        ('{url: "http://x/a.zip", sha256: "abc"}', "sha256 must be 64 lowercase hex digits"),
        ('{url: "http://x/a.zip", md5: "' + "A" * 32 + '"}', "md5 must be 32 lowercase hex digits"),
        ('{url: "http://x/a.zip", extract: false}', "unknown key"),
    ],
)
def test_spec_download_facts_are_validated(tmp_path: Path, entry: str, message: str) -> None:
    from benchmark.data.parse import parse_spec

    folder = tmp_path / "visda2017"
    folder.mkdir()
    source = get_spec("visda2017").path
    (folder / "classes.txt").write_text((source / "classes.txt").read_text())
    text = (source / "dataset.yaml").read_text()
    start = text.index("download:")
    end = text.index("protocols:")
    (folder / "dataset.yaml").write_text(text[:start] + f"download:\n  - {entry}\n" + text[end:])
    with pytest.raises(DataError, match=message):
        parse_spec(folder / "dataset.yaml")
