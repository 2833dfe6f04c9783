"""Make a Linux bundle's native libraries smaller without changing what the app does.

Two steps, both used by ocula.spec on Linux, on copies under the build folder (the
environment's files are never touched):

* ``strip_debug`` — some wheels ship their libraries with DWARF debug information: PyAV's
  Cython modules (30 MB, 25 of them debug data), Pillow's, and pyenv's libpython and
  ``lib-dynload`` modules. ``strip --strip-debug`` removes only the ``.debug_*`` sections;
  symbols, dynamic sections and RPATHs stay, so auditwheel-repaired libraries keep
  working (a full ``strip`` is what broke numpy's OpenBLAS). Files without debug sections
  are left as they are.
* ``trim_icu_data`` — Qt links ICU, whose data library (``libicudata.so.73``, 32 MB) holds
  every locale's collation, calendar names, currency/unit/zone translations, legacy
  character-set tables and the CJK/Thai word-break dictionaries. Qt uses ICU for
  collation (QCollator), case mapping and legacy codecs; its own CLDR tables serve
  QLocale. The app's strings are English, so the trimmed data keeps the root and English
  locales, every property/normalization/break-rule/time-zone file and the alias table,
  and drops the other locales' resources, the legacy ``.cnv`` converter tables, the
  word-break dictionaries and the transliterators (see ``icu_item_wanted``). Other locales
  then fall back to root: sorting follows the Unicode Collation Algorithm's default order
  instead of a language's tailoring. ICU's own tools do the work: ``icupkg`` removes the
  items, ``genccode`` writes the data as an assembler file, gcc links it under the
  library's soname.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

_LOCALE = re.compile(r"^(?P<lang>[a-z]{2,3})(_[A-Za-z0-9]*)*$")
_KEEP_LANGS = {"en"}
_KEEP_NAMES = {"res_index", "root", "pool"}


_PROGBITS = 1  # sh_type of sections with file contents


def elf_sections(path: Path) -> list[tuple[str, int, int, int, int]]:
    """(name, type, address, file offset, size) of each section of a 64-bit little-endian
    ELF file; [] for any other file."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return []
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
        if not shoff or not shnum or shstrndx >= shnum:
            return []
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        headers = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _, _, _, _, str_off, str_size = headers[shstrndx]
        f.seek(str_off)
        strings = f.read(str_size)
    return [(strings[name:strings.index(b"\0", name)].decode("ascii", "replace"), kind, addr,
             offset, size) for name, kind, _, addr, offset, size in headers]


def elf_section_names(path: Path) -> list[str]:
    """Section names of an ELF file; [] when it is not a 64-bit little-endian ELF."""
    return [section[0] for section in elf_sections(path)]


def has_debug_info(path: Path) -> bool:
    return any(name.startswith(".debug_") for name in elf_section_names(path))


def strip_debug(src: Path, out_dir: Path) -> Path:
    """A copy of ``src`` without debug sections under ``out_dir``, or ``src`` itself when
    it has none (or binutils' strip is missing)."""
    if not has_debug_info(src) or shutil.which("strip") is None:
        return src
    key = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]
    dest = out_dir / "stripped" / key / src.name
    if dest.exists() and dest.stat().st_mtime >= src.stat().st_mtime:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(src, tmp)
    subprocess.run(["strip", "--strip-debug", str(tmp)], check=True)
    tmp.replace(dest)
    return dest


def icu_item_wanted(item: str) -> bool:
    """Whether an ICU data item (``coll/de.res``, ``ibm-943_P15A-2003.cnv``…) stays."""
    folder, _, name = item.rpartition("/")
    if item.endswith(".cnv") or folder == "translit":
        return False
    if not name.endswith(".res"):
        return True  # properties, normalization, break rules, alias table, confusables
    stem = name[:-len(".res")]
    match = _LOCALE.match(stem)
    if stem in _KEEP_NAMES or match is None:
        return True  # supplementalData, zoneinfo64, metaZones, plurals, …
    return match["lang"] in _KEEP_LANGS


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise FileNotFoundError(f"{name} not found (Debian: apt-get install icu-devtools)")
    return path


def _data_symbol(lib: Path) -> tuple[str, bytes]:
    """The ``icudtNN_dat`` symbol of an ICU data library and the bytes it points at."""
    nm = subprocess.run(["nm", "-D", "-S", "--defined-only", str(lib)], check=True,
                        capture_output=True, text=True).stdout
    found = [line.split() for line in nm.splitlines() if re.search(r"\bicudt\d+_dat$", line)]
    if len(found) != 1:
        raise ValueError(f"{lib}: expected one icudtNN_dat symbol, nm says {found}")
    address, size, _, symbol = found[0]
    address, size = int(address, 16), int(size, 16)
    for _, kind, sec_addr, sec_off, sec_size in elf_sections(lib):
        if kind == _PROGBITS and sec_addr <= address and address + size <= sec_addr + sec_size:
            with open(lib, "rb") as f:
                f.seek(sec_off + address - sec_addr)
                return symbol, f.read(size)
    raise ValueError(f"{lib}: no section holds {symbol}")


def trim_icu_data(lib: Path, out_dir: Path) -> Path:
    """A rebuilt ``libicudataNN`` under ``out_dir`` with only the wanted items."""
    rules = hashlib.sha1(Path(__file__).read_bytes() + str(lib.resolve()).encode()).hexdigest()
    dest = out_dir / "icu" / rules[:12] / lib.name  # rebuilt when these rules change
    if dest.exists() and dest.stat().st_mtime >= lib.stat().st_mtime:
        return dest
    symbol, blob = _data_symbol(lib)
    entry = symbol[:-len("_dat")]  # icudt73
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        full = tmp / f"{entry}l.dat"
        full.write_bytes(blob)
        items = subprocess.run([_tool("icupkg"), "-l", str(full)], check=True,
                               capture_output=True, text=True).stdout.split()
        drop = [item for item in items if not icu_item_wanted(item)]
        (tmp / "drop.txt").write_text("\n".join(drop) + "\n", encoding="ascii")
        trimmed = tmp / "trimmed" / full.name
        trimmed.parent.mkdir()
        subprocess.run([_tool("icupkg"), "-r", str(tmp / "drop.txt"), str(full), str(trimmed)],
                       check=True, capture_output=True)
        subprocess.run([_tool("genccode"), "-a", "gcc", "-e", entry, "-d", str(tmp),
                        str(trimmed)], check=True, capture_output=True)
        (asm,) = tmp.glob("*.S")
        dest.parent.mkdir(parents=True, exist_ok=True)
        built = tmp / lib.name
        subprocess.run(["gcc", "-shared", "-nostdlib", f"-Wl,-soname,{lib.name}",
                        "-Wl,-z,noexecstack", "-o", str(built), str(asm)], check=True)
        built.replace(dest)
    return dest


def slim(binaries: list, work_dir: Path, log=print) -> list:
    """PyInstaller TOC entries ``(dest, src, typecode)`` with debug-stripped copies and a
    trimmed ICU data library in place of the originals."""
    work_dir.mkdir(parents=True, exist_ok=True)
    out, saved = [], 0
    for dest, src, typecode in binaries:
        path = Path(src)
        new = path
        if path.is_file():
            if re.match(r"libicudata\.so\.\d+$", path.name):
                new = trim_icu_data(path, work_dir)
            else:
                new = strip_debug(path, work_dir)
        saved += path.stat().st_size - new.stat().st_size if new != path else 0
        out.append((dest, str(new), typecode))
    log(f"slim_binaries: {saved / 1e6:.1f} MB less (debug sections stripped, ICU data trimmed)")
    return out
