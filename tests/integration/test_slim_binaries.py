"""packaging/slim_binaries.py: the Lite bundle's smaller native libraries still do their job.

Oracles are the unmodified libraries from the wheels: the trimmed ICU data must collate,
case-map and find word boundaries exactly as the full data for the locales it keeps (and
fall back to root, not fail, for the others); a debug-stripped PyAV must decode the same
frames as the original.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))
import slim_binaries  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF libraries")

WORDS = ["Zebra", "zebra", "Äpfel", "apple", "Apfel", "résumé", "resume", "Ölberg", "ober",
         "straße", "strasse", "Ω", "omega", "二", "一", "a-b", "ab", "a b", "10", "9", "İstanbul"]

_PROBE = textwrap.dedent(r"""
    import ctypes, json, sys
    lib_dir, version = sys.argv[1], sys.argv[2]
    uc = ctypes.CDLL(f"{lib_dir}/libicuuc.so.{version}")
    i18n = ctypes.CDLL(f"{lib_dir}/libicui18n.so.{version}")
    def fn(lib, name, restype=ctypes.c_int32):
        f = getattr(lib, f"{name}_{version}")
        f.restype = restype
        return f
    def u16(s):
        b = s.encode("utf-16-le")
        return ctypes.create_string_buffer(b, len(b) + 2), len(b) // 2
    report = {}
    for loc in ("root", "en_US", "de_DE"):
        status = ctypes.c_int(0)
        coll = fn(i18n, "ucol_open", ctypes.c_void_p)(loc.encode(), ctypes.byref(status))
        keys = []
        for w in json.loads(sys.argv[3]):
            buf, n = u16(w)
            out = ctypes.create_string_buffer(512)
            size = fn(i18n, "ucol_getSortKey")(ctypes.c_void_p(coll), buf, n, out, 512)
            keys.append(out.raw[:size].hex())
        fn(i18n, "ucol_close", None)(ctypes.c_void_p(coll))
        report[loc] = {"status": status.value, "keys": keys}
    upper = {}
    for loc in ("en", "tr", "de"):
        status = ctypes.c_int(0)
        buf, n = u16("straße istanbul ǆ")
        out = ctypes.create_string_buffer(256)
        size = fn(uc, "u_strToUpper")(out, 128, buf, n, loc.encode(), ctypes.byref(status))
        upper[loc] = out.raw[:2 * size].decode("utf-16-le")
    report["upper"] = upper
    status = ctypes.c_int(0)
    text, n = u16("Don't stop: 3.5 apples, e-mail me.")
    brk = fn(uc, "ubrk_open", ctypes.c_void_p)(1, b"en_US", text, n, ctypes.byref(status))
    bounds, nxt = [], fn(uc, "ubrk_next")
    while (b := nxt(ctypes.c_void_p(brk))) != -1:
        bounds.append(b)
    report["word_breaks"] = [status.value, bounds]
    for name in ("UTF-8", "ISO-8859-1", "US-ASCII", "Shift_JIS"):
        status = ctypes.c_int(0)
        conv = fn(uc, "ucnv_open", ctypes.c_void_p)(name.encode(), ctypes.byref(status))
        report["converter " + name] = status.value <= 0 and bool(conv)
    print(json.dumps(report))
""")


def _qt_lib_dir() -> Path:
    qt = pytest.importorskip("PySide6")
    lib = Path(qt.__file__).parent / "Qt" / "lib"
    if not list(lib.glob("libicudata.so.*")):
        pytest.skip("this PySide6 does not ship ICU")
    return lib


def _probe(lib_dir: Path, version: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(lib_dir), version, json.dumps(WORDS)],
                         check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def icu_pair(tmp_path_factory):
    for tool in ("icupkg", "genccode", "gcc", "nm"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            pytest.fail(f"{tool} is missing: tests/run.sh installs icu-devtools and binutils")
    lib = _qt_lib_dir()
    data = next(lib.glob("libicudata.so.*"))
    version = data.name.rsplit(".", 1)[1]
    work = tmp_path_factory.mktemp("slim")
    trimmed = slim_binaries.trim_icu_data(data, work)
    trimmed_dir = work / "trimmed-lib"
    trimmed_dir.mkdir()
    for name in (f"libicuuc.so.{version}", f"libicui18n.so.{version}"):
        shutil.copy2(lib / name, trimmed_dir / name)
    shutil.copy2(trimmed, trimmed_dir / data.name)
    return data, trimmed, _probe(lib, version), _probe(trimmed_dir, version)


def test_trimmed_icu_data_is_a_quarter_of_the_original(icu_pair):
    data, trimmed, _, _ = icu_pair
    assert trimmed.stat().st_size < 0.3 * data.stat().st_size, (data.stat().st_size,
                                                                 trimmed.stat().st_size)


def test_trimmed_icu_collates_root_and_english_exactly_as_the_full_data(icu_pair):
    _, _, full, trimmed = icu_pair
    for loc in ("root", "en_US"):
        assert trimmed[loc]["keys"] == full[loc]["keys"], loc
        assert trimmed[loc]["status"] <= 0  # no error (warnings are negative)
    ordered = [w for _, w in sorted(zip(trimmed["en_US"]["keys"], WORDS))]
    assert ordered.index("apple") < ordered.index("Zebra")  # not code-point order


def test_other_locales_fall_back_to_root_collation_instead_of_failing(icu_pair):
    _, _, full, trimmed = icu_pair
    U_USING_DEFAULT_WARNING = -127  # the root locale was used; a warning, not an error
    assert trimmed["de_DE"]["status"] == U_USING_DEFAULT_WARNING
    assert trimmed["de_DE"]["keys"] == trimmed["root"]["keys"]
    assert full["de_DE"]["status"] != U_USING_DEFAULT_WARNING


def test_case_mapping_and_word_breaks_are_unchanged(icu_pair):
    _, _, full, trimmed = icu_pair
    assert trimmed["upper"] == full["upper"]
    assert trimmed["upper"]["tr"].startswith("STRASSE İSTANBUL")
    assert trimmed["word_breaks"] == full["word_breaks"]
    assert trimmed["word_breaks"][1][-1] == len("Don't stop: 3.5 apples, e-mail me.")


def test_only_the_legacy_table_converters_are_gone(icu_pair):
    _, _, full, trimmed = icu_pair
    for name in ("UTF-8", "ISO-8859-1", "US-ASCII"):
        assert trimmed["converter " + name] and full["converter " + name], name
    assert full["converter Shift_JIS"] and not trimmed["converter Shift_JIS"]


@pytest.mark.parametrize("item, kept", [
    ("coll/de.res", False), ("coll/de_.res", False), ("coll/root.res", True),
    ("coll/ucadata.icu", True), ("en_GB.res", True), ("fr.res", False), ("zh_Hant_TW.res", False),
    ("res_index.res", True), ("curr/pool.res", True), ("supplementalData.res", True),
    ("zoneinfo64.res", True), ("ibm-943_P15A-2003.cnv", False), ("cnvalias.icu", True),
    ("translit/root.res", False), ("brkitr/word.brk", True), ("brkitr/cjdict.dict", True),
    ("nfkc.nrm", True), ("unit/en_001.res", True), ("unit/haw.res", False),
])
def test_which_icu_items_stay(item, kept):
    assert slim_binaries.icu_item_wanted(item) is kept


def test_debug_stripped_pyav_decodes_the_same_frames(tmp_path):
    av = pytest.importorskip("av")
    import numpy as np
    package = Path(av.__file__).parent
    copy = tmp_path / "site"
    shutil.copytree(package, copy / "av")
    libs = package.parent / "av.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / "av.libs")
    modules = [p for p in (copy / "av").rglob("*.so") if slim_binaries.has_debug_info(p)]
    if not modules:
        pytest.skip("this PyAV wheel has no debug sections")
    before = sum(p.stat().st_size for p in modules)
    for path in modules:
        stripped = slim_binaries.strip_debug(path, tmp_path / "work")
        assert stripped != path and not slim_binaries.has_debug_info(stripped)
        shutil.copy2(stripped, path)
    assert sum(p.stat().st_size for p in modules) < 0.5 * before

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(8):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[:, : 8 * i] = (200, 30 * i, 90)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    decode = ("import sys, av, hashlib\n"
              "h = hashlib.sha256()\n"
              "with av.open(sys.argv[1]) as c:\n"
              "    for f in c.decode(video=0): h.update(f.to_ndarray(format='rgb24').tobytes())\n"
              "print(av.__file__, h.hexdigest())")

    def run(path_entry: str) -> list[str]:
        env = {"PYTHONPATH": path_entry, "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", decode, str(clip)], check=True, env=env,
                             capture_output=True, text=True, timeout=60)
        return out.stdout.split()

    stripped_file, stripped_hash = run(str(copy))
    original_file, original_hash = run(str(package.parent))
    assert stripped_file.startswith(str(copy)) and original_file.startswith(str(package.parent))
    assert stripped_hash == original_hash


def test_files_without_debug_sections_are_not_copied(tmp_path):
    numpy = pytest.importorskip("numpy")
    candidates = [p for p in Path(numpy.__file__).parent.parent.joinpath("numpy.libs").glob("*.so*")]
    plain = next((p for p in candidates if not slim_binaries.has_debug_info(p)), None)
    if plain is None:
        pytest.skip("no library without debug sections found")
    assert slim_binaries.strip_debug(plain, tmp_path) == plain
    assert slim_binaries.elf_section_names(plain)  # an ELF file it could read
    assert slim_binaries.elf_section_names(Path(numpy.__file__)) == []  # not ELF
