"""Offline means no packet leaves: training runs and a sweep, their whole process tree watched.

Python-level socket hooks see neither TensorFlow's nor TFDS's own look-ups, nor the wandb
service process, so each command runs under ``strace -f``, which records every ``connect`` and
``send*`` of every thread of every process it starts. Any contact with a non-loopback IPv4 or
IPv6 address, or with port 53 anywhere (a DNS query, even to a local stub resolver, is a
look-up of a remote name), fails the test; unix sockets and loopback are the local wandb
service. A machine without strace, or one that forbids ptrace, fails these tests: it cannot
show that nothing left.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gru_research.tracking import offline_run_files

TRACED_SYSCALLS = "connect,sendto,sendmsg,sendmmsg"
LOCAL_FAMILIES = {"AF_UNIX", "AF_LOCAL", "AF_NETLINK", "AF_UNSPEC"}
DNS_PORT = 53
COMMAND_TIMEOUT_S = 300
TINY_RUN = (
    "--seq-len 5 --hidden 8 --steps 3 --batch-size 4 --log-every 1 --eval-every 3"
    " --checkpoint-every 3 --eval-batches 1"
).split()
# what a researcher's shell may say; offline must not care
HOSTILE_ENVIRONMENT = {"WANDB_MODE": "online", "WANDB_ERROR_REPORTING": "true"}


# ---------------------------------------------------------------------------- reading strace


@dataclass(frozen=True)
class Contact:
    """One socket address a traced syscall named: who, which call, where."""

    pid: int
    syscall: str
    family: str
    address: str | None
    port: int | None
    line: str

    def __str__(self) -> str:
        where = self.family if self.address is None else f"{self.family} {self.address}"
        return f"pid {self.pid} {self.syscall} {where}" + (
            f" port {self.port}" if self.port is not None else ""
        )


_CALL = re.compile(r"^(?:\[pid\s+)?(?P<pid>\d+)\]?\s+(?P<syscall>\w+)\(")
# a quoted C string, with strace's escapes; address literals keep theirs
_QUOTED = re.compile(r'(?P<literal>inet_addr\(|inet_pton\(AF_INET6,\s*)?"(?:[^"\\]|\\.)*"')
_SOCKADDR = re.compile(r"\{sa_family=(?P<family>AF_\w+|\d+)(?P<body>[^{}]*)\}")
_PORT = re.compile(r"sin6?_port=htons\((?P<port>\d+)\)")
_ADDRESS = re.compile(r'(?:inet_addr\(|inet_pton\(AF_INET6,\s*)"(?P<address>[^"]*)"')


def _mask_payloads(line: str) -> str:
    """The line with every data string emptied, so bytes sent never read as an address."""
    return _QUOTED.sub(lambda m: m.group(0) if m.group("literal") else '""', line)


def parse_contacts(text: str) -> list[Contact]:
    """Every socket address in strace's ``-f`` output (``connect``'s, ``sendto``'s,
    ``sendmsg``'s and ``sendmmsg``'s ``msg_name``), in order."""
    contacts = []
    for line in text.splitlines():
        call = _CALL.match(line)
        if call is None:
            continue
        for sockaddr in _SOCKADDR.finditer(_mask_payloads(line)):
            body = sockaddr.group("body")
            port, address = _PORT.search(body), _ADDRESS.search(body)
            contacts.append(
                Contact(
                    pid=int(call.group("pid")),
                    syscall=call.group("syscall"),
                    family=sockaddr.group("family"),
                    address=address.group("address") if address else None,
                    port=int(port.group("port")) if port else None,
                    line=line,
                )
            )
    return contacts


def is_loopback(address: str | None) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped loopback; anything unreadable is not."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def leaves_the_machine(contact: Contact) -> bool:
    """Whether a contact may put a packet on the network, or looks a remote name up."""
    if contact.family in LOCAL_FAMILIES:
        return False
    if contact.family not in ("AF_INET", "AF_INET6"):
        return True  # a family we cannot vouch for (raw packets, ...)
    return contact.port == DNS_PORT or not is_loopback(contact.address)


def remote_contacts(text: str) -> list[Contact]:
    return [c for c in parse_contacts(text) if leaves_the_machine(c)]


# ---------------------------------------------------------------------------- running strace


def strace_prefix(log: Path) -> list[str]:
    """The strace command line that writes every traced call of the whole tree to ``log``.

    Fails (never skips) where strace is missing or cannot trace: without it nothing is shown.
    ``--seccomp-bpf`` (strace >= 5.3) stops the tracee only at the traced calls, far faster.
    """
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail(
            "strace is not installed, so no network contact can be ruled out"
            " (Debian: apt-get install strace; .ci/run installs it)"
        )
    base = [strace, "-f", "-qq", "-s", "64", "-e", "signal=none", "-e", f"trace={TRACED_SYSCALLS}"]
    errors = []
    for fast in (["--seccomp-bpf"], []):
        probe = subprocess.run(
            [*base, *fast, "-o", os.devnull, "true"], capture_output=True, text=True
        )
        if probe.returncode == 0:
            return [*base, *fast, "-o", str(log)]
        errors.append(probe.stderr.strip())
    pytest.fail(f"strace cannot trace here (is ptrace permitted?): {errors[-1]}")


def traced(command: list[str], tmp_path: Path, name: str) -> tuple[str, list[Contact]]:
    """Run ``command`` under strace from ``tmp_path``; its output and its remote contacts."""
    log = tmp_path / f"{name}.strace"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SERVICE")
    }
    result = subprocess.run(
        [*strace_prefix(log), *command],
        cwd=tmp_path,
        env=env | HOSTILE_ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} failed (exit {result.returncode}):\n{output[-3000:]}"
    return output, remote_contacts(log.read_text())


def assert_stays_local(contacts: list[Contact], name: str) -> None:
    assert not contacts, f"{name} contacted the network:\n" + "\n".join(
        f"  {c}\n    {c.line[:240]}" for c in contacts
    )


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gru_research.cli", *args]


# ---------------------------------------------------------------------------- the reader


IPV4_DNS = (
    '123 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.2.3.4")}, 16)'
    " = 0"
)
IPV6_HTTPS = (
    "77 connect(9, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0),"
    ' inet_pton(AF_INET6, "2606:4700::1", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>'
)
SENDMMSG_NAMED = (
    "5 sendmmsg(3, [{msg_hdr={msg_name={sa_family=AF_INET, sin_port=htons(123),"
    ' sin_addr=inet_addr("192.0.2.7")}, msg_namelen=16, msg_iov=[{iov_base="\\x01", iov_len=1}],'
    " msg_iovlen=1, msg_controllen=0, msg_flags=0}, msg_len=1}], 1, 0) = 1"
)
LOCAL_LINES = "\n".join(
    [
        '8 connect(5, {sa_family=AF_UNIX, sun_path="/tmp/wandb-1.sock"}, 110) = 0',
        '8 connect(5, {sa_family=AF_INET, sin_port=htons(41000), sin_addr=inet_addr("127.0.0.1")},'
        " 16) = 0",
        "8 connect(5, {sa_family=AF_INET6, sin6_port=htons(8080), sin6_flowinfo=htonl(0),"
        ' inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        "8 connect(5, {sa_family=AF_INET6, sin6_port=htons(8080), sin6_flowinfo=htonl(0),"
        ' inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        "8 sendto(5, {{len=20, type=RTM_GETADDR}}, 20, 0, {sa_family=AF_NETLINK, nl_pid=0,"
        " nl_groups=00000000}, 12) = 20",
        '8 sendto(7, "\\n\\223 {sa_family=AF_INET, sin_addr=inet_addr(\\"8.8.8.8\\")}", 40, 0,'
        " NULL, 0) = 40",
        "8 <... connect resumed>) = 0",
    ]
)


def test_strace_lines_are_read_as_family_address_and_port():
    (dns,) = parse_contacts(IPV4_DNS)
    assert (dns.pid, dns.syscall, dns.family, dns.address, dns.port) == (
        123,
        "connect",
        "AF_INET",
        "10.2.3.4",
        53,
    )
    (https,) = parse_contacts(IPV6_HTTPS)
    assert (https.family, https.address, https.port) == ("AF_INET6", "2606:4700::1", 443)
    (named,) = parse_contacts(SENDMMSG_NAMED)
    assert (named.syscall, named.address, named.port) == ("sendmmsg", "192.0.2.7", 123)
    # bytes sent that spell an address are data, not a destination
    assert [c.family for c in parse_contacts(LOCAL_LINES)] == [
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_INET6",
        "AF_NETLINK",
    ]


def test_only_unix_loopback_and_no_dns_count_as_local():
    assert remote_contacts(LOCAL_LINES) == []
    assert [c.address for c in remote_contacts(f"{IPV4_DNS}\n{IPV6_HTTPS}\n{SENDMMSG_NAMED}")] == [
        "10.2.3.4",
        "2606:4700::1",
        "192.0.2.7",
    ]
    stub_resolver = IPV4_DNS.replace("10.2.3.4", "127.0.0.53")
    assert remote_contacts(stub_resolver), "a DNS query to a local resolver still looks a name up"
    raw = '4 sendto(3, "x", 1, 0, {sa_family=AF_PACKET, sll_protocol=htons(ETH_P_ALL)}, 20) = 1'
    assert remote_contacts(raw)


def test_offline_and_disabled_get_the_local_switches_and_online_none():
    # imported here: the watched runs below check any version of the code, even one without it
    from gru_research.offline import (
        WANDB_LOCAL_ENVIRONMENT,
        WANDB_LOCAL_SETTINGS,
        is_local_path,
        wandb_environment,
        wandb_settings,
    )

    for mode in ("offline", "disabled"):
        assert wandb_settings(mode) == {"mode": mode, **WANDB_LOCAL_SETTINGS}
        assert wandb_environment(mode) == WANDB_LOCAL_ENVIRONMENT
    assert wandb_settings("online") == {"mode": "online"}
    assert wandb_environment("online") == {}
    assert is_local_path(None) and is_local_path("/data/tfds") and is_local_path(Path("x"))
    assert not is_local_path("gs://tfds-data/datasets")


def test_the_watcher_sees_a_remote_connect(tmp_path):
    # a UDP connect sends no packet, but strace sees it as any other connection
    probe = (
        "import contextlib, socket\n"
        "for address in [('192.0.2.1', 9), ('127.0.0.1', 9), ('127.0.0.53', 53)]:\n"
        "    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
        "        with contextlib.suppress(OSError):\n"
        "            s.connect(address)\n"
    )
    _, contacts = traced([sys.executable, "-c", probe], tmp_path, "probe")
    assert [(c.address, c.port) for c in contacts] == [("192.0.2.1", 9), ("127.0.0.53", 53)]


# ---------------------------------------------------------------------------- the runs


@pytest.mark.slow
def test_an_offline_copy_run_contacts_no_remote_address(tmp_path):
    output, contacts = traced(
        cli("train", "--task", "copy", *TINY_RUN, "--out", "run", "--wandb", "offline"),
        tmp_path,
        "copy run",
    )
    assert_stays_local(contacts, "train --task copy --wandb offline")
    assert offline_run_files(tmp_path / "run"), f"no offline W&B run was written:\n{output}"


@pytest.mark.slow
def test_an_offline_tfds_language_model_run_contacts_no_remote_address(tmp_path):
    options = ["--tfds-data-dir", "tfds", "--out", "run", "--wandb", "offline"]
    output, contacts = traced(cli("train", "--task", "lm", *TINY_RUN, *options), tmp_path, "lm run")
    assert_stays_local(contacts, "train --task lm (TFDS tiny_shakespeare) --wandb offline")
    assert (tmp_path / "tfds" / "tiny_shakespeare").is_dir(), f"TFDS was not used:\n{output}"
    assert offline_run_files(tmp_path / "run"), f"no offline W&B run was written:\n{output}"


@pytest.mark.slow
def test_an_offline_two_point_sweep_contacts_no_remote_address(tmp_path):
    options = dict(zip(TINY_RUN[::2], TINY_RUN[1::2], strict=True))
    parameters = {flag[2:].replace("-", "_"): {"value": int(v)} for flag, v in options.items()}
    sweep = {
        "method": "grid",
        "seeds": 1,
        "parameters": {
            "task": {"value": "copy"},
            "cell": {"values": ["gru", "min_gru"]},
            **parameters,
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(sweep))
    output, contacts = traced(
        cli("sweep", "tiny.yaml", "--out", "sweep", "--wandb", "offline", "--jobs", "2"),
        tmp_path,
        "sweep",
    )
    assert_stays_local(contacts, "sweep (two points) --wandb offline")
    runs = sorted((tmp_path / "sweep").glob("**/wandb/*/run-*.wandb"))
    assert len({run.name for run in runs}) == 2, f"expected two offline W&B runs:\n{output}"
