"""Run a script under Debian's own kernel, booted in qemu, for kernel features
this machine's kernel lacks (IPVS, the dummy driver).

    result = run_in_kernel(".venv/bin/python tests/kernel/guest_ipvs.py",
                           modules=["ip_vs", "dummy"], timeout=600)
    assert result.rc == 0, result.output

How: the kernel package `linux-image-amd64` depends on is fetched once with
`apt-get download` and unpacked with `dpkg-deb -x` into
/var/cache/kube-netlab/kernel/<version>. Each run packs an initramfs of
busybox-static, the asked modules and their dependencies (read from each
module's .modinfo: the package ships no modules.dep and this host has no
depmod), boots it with TCG (KVM hangs here), mounts the host's root read-only
over 9p and chroots into it with tmpfs on the paths tools write (/run, /tmp,
/etc/netns, /var/lib/cni), so nothing reaches the host. The script runs with
/bin/sh in the chroot, from the repository; its output and exit code come back
through a second, writable 9p share of a host tmp dir, and the guest powers
off (-no-reboot makes qemu exit).
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("KUBE_NETLAB_KERNEL_CACHE", "/var/cache/kube-netlab/kernel"))
META_PACKAGE = "linux-image-amd64"
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
REPO = Path(__file__).resolve().parents[2]
# Always in the initramfs: what mounting the host root over virtio-9p needs.
BOOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
# Mount points in the chroot that get a tmpfs, so writes stay in the guest.
WRITABLE = ["/run", "/tmp", "/etc/netns", "/var/lib/cni"]
SHARE = "/tmp/kernel-test"     # where the writable share appears in the chroot


class KernelUnavailable(RuntimeError):
    """qemu, busybox or the kernel package cannot be had: tests skip with this reason."""


@dataclasses.dataclass
class Result:
    rc: int | None          # the script's exit code; None: it never finished (timeout, panic)
    output: str             # the script's stdout and stderr
    console: str            # the serial console: kernel messages, init's notes
    boot_seconds: float     # kernel start to the script starting (the guest's uptime then)
    seconds: float          # qemu start to qemu exit

    def explain(self) -> str:
        """Everything a failed test should print."""
        return (f"rc={self.rc} boot={self.boot_seconds:.1f}s total={self.seconds:.1f}s\n"
                f"--- script output ---\n{self.output}\n--- console (tail) ---\n{self.console[-4000:]}")


def unavailable_reason() -> str | None:
    """Why kernel tests cannot run here, or None."""
    if not shutil.which(QEMU):
        return f"{QEMU} is not installed (scripts/bootstrap.sh installs qemu-system-x86)"
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} is missing (install busybox-static)"
    if not shutil.which("cpio"):
        return "cpio is not installed"
    if not _cached_versions() and not (shutil.which("apt-get") and os.access(CACHE.parent.parent, os.W_OK)):
        return f"no kernel in {CACHE} and apt-get cannot fetch one (needs root and apt)"
    return None


def _cached_versions() -> list[Path]:
    if not CACHE.is_dir():
        return []
    return sorted(p for p in CACHE.iterdir() if (p / ".complete").exists())


def _kernel_package() -> str:
    """The versioned package the meta package depends on, e.g. linux-image-6.1.0-57-amd64."""
    out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True, text=True).stdout
    for line in out.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "Depends" and value.startswith("linux-image-"):
            return value.strip()
    raise KernelUnavailable(f"apt-cache depends {META_PACKAGE} names no linux-image-* package "
                            "(run apt-get update)")


def kernel_dir() -> Path:
    """The unpacked kernel package, downloaded on first use and reused after."""
    try:
        package = _kernel_package()
    except (KernelUnavailable, FileNotFoundError):
        cached = _cached_versions()
        if cached:
            return cached[-1]      # offline: the newest kernel we already have
        raise
    version = package.removeprefix("linux-image-")
    target = CACHE / version
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # two test runs must not unpack into each other
        if not (target / ".complete").exists():
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                res = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
                debs = list(Path(tmp).glob("*.deb"))
                if res.returncode != 0 or not debs:
                    raise KernelUnavailable(f"apt-get download {package}: {res.stderr.strip()}")
                shutil.rmtree(target, ignore_errors=True)
                subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(target)], check=True)
            (target / ".complete").write_text(package + "\n")
    return target


# --- modules -----------------------------------------------------------------

def _modinfo(path: Path) -> dict[str, list[str]]:
    """The key=value strings of a module's .modinfo ELF section."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path}: not an ELF64 module (compressed modules are not handled)")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name, offset, size = section(i)
        if data[str_off + name:].split(b"\0", 1)[0] == b".modinfo":
            for item in data[offset:offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def _canonical(name: str) -> str:
    return name.replace("-", "_")


def module_files(kdir: Path, modules: list[str]) -> list[Path]:
    """The .ko files to load, dependencies first, each once; built-ins skipped."""
    (mod_root,) = (kdir / "lib" / "modules").iterdir()
    index = {_canonical(p.name.split(".ko")[0]): p for p in mod_root.rglob("*.ko*")}
    builtin = {_canonical(Path(line).name.split(".ko")[0])
               for line in (mod_root / "modules.builtin").read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = _canonical(name)
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise KernelUnavailable(f"module {name!r} is neither built in nor in {mod_root}")
        info = _modinfo(index[name])
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                visit(dep)
        # softdep pre: names are often aliases of a crypto driver ("crc32c"); the
        # generic implementation is the one that always exists
        for soft in info.get("softdep", []):
            pre = False
            for word in soft.split():
                if word.endswith(":"):
                    pre = word == "pre:"
                elif pre:
                    for candidate in (word, word + "_generic"):
                        if _canonical(candidate) in index:
                            visit(candidate)
                            break
        order.append(index[name])

    for name in BOOT_MODULES + list(modules):
        visit(name)
    return order


# --- initramfs and boot ------------------------------------------------------

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m || echo "kernel-test: insmod $m failed"; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host || echo "kernel-test: no host root"
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
for d in @WRITABLE@; do
  if [ -d /host$d ]; then mount -t tmpfs tmpfs /host$d; else echo "kernel-test: no $d on the host, left out"; fi
done
mkdir -p /host@SHARE@
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /host@SHARE@
cut -d" " -f1 /proc/uptime > /host@SHARE@/started
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 KUBE_NETLAB_IN_KERNEL_TEST=1 \
  /bin/sh -c 'cd "$1" && /bin/sh "$2/script.sh" > "$2/output" 2>&1; echo $? > "$2/rc"' sh @CWD@ @SHARE@
sync
poweroff -f
"""


def _initramfs(modules: list[Path], workdir: Path) -> Path:
    root = workdir / "initramfs"
    for d in ("bin", "proc", "sys", "dev", "modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for path in modules:
        shutil.copy(path, root / "modules" / path.name)
    (root / "modules.order").write_text("\n".join(p.name for p in modules) + "\n")
    init = (INIT.replace("@WRITABLE@", " ".join(WRITABLE)).replace("@SHARE@", SHARE)
            .replace("@CWD@", str(REPO)))
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    image = workdir / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
    with open(image, "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(),
                       stdout=out, check=True)
    return image


def run_in_kernel(script: str, modules: list[str], timeout: float = 600.0, *,
                  memory_mb: int = 1024) -> Result:
    """Boot Debian's kernel with modules loaded and run script (sh, cwd = the
    repository, the host's root read-only) in it. Never raises for what the
    script does: a timeout or a panic gives rc=None."""
    if reason := unavailable_reason():
        raise KernelUnavailable(reason)
    kdir = kernel_dir()
    (vmlinuz,) = (kdir / "boot").glob("vmlinuz-*")
    with tempfile.TemporaryDirectory(prefix="kernel-test-") as tmp:
        work = Path(tmp)
        share = work / "share"
        share.mkdir()
        (share / "script.sh").write_text(script + "\n")
        initrd = _initramfs(module_files(kdir, modules), work)
        argv = [QEMU, "-accel", "tcg", "-m", str(memory_mb), "-smp", "1", "-nographic", "-no-reboot",
                "-kernel", str(vmlinuz), "-initrd", str(initrd),
                "-nic", "none", "-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
                "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
                "-virtfs", f"local,path={share},mount_tag=out,security_model=none,multidevs=remap"]
        started = time.time()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            console, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            console, _ = proc.communicate()
            console += f"\nkernel-test: killed after {timeout:.0f} s".encode()
        seconds = time.time() - started

        def read(name: str) -> str:
            path = share / name
            return path.read_text(errors="replace") if path.exists() else ""

        rc_text = read("rc").strip()
        boot = float(read("started") or "nan")
        return Result(rc=int(rc_text) if rc_text else None, output=read("output"),
                      console=console.decode(errors="replace"), boot_seconds=boot, seconds=seconds)
