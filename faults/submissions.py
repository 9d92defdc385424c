"""The fault suite's hostile lab 1 submissions: each is the instructor solution with one fault put in,
and the outcomes that count as the grader recognising it.

An outcome is read from a result (``outcome(result)``): ``crash`` (the engine's "kernel crashed"
verdict), ``<status>:<phase>`` for the first phase that timed out or failed, ``pass`` (full marks) or
``checks`` (every phase ran, some checks failed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from support import lab1_submissions as fx

COPY4_FILTER_BLOCK = fx.COPY4_FILTER + "\t\treturn 0;\n"
COPY1_FILTER_BLOCK = fx.COPY1_FILTER + "\t\treturn 0;\n"
EXIT_START = "static void __exit copytrace_exit(void)\n{\n"
INCLUDES = "#include <linux/uio.h>\n"


@dataclass(frozen=True)
class Fault:
    name: str
    part: str                      # "kernel" or "user"
    what: str                      # one line for the report
    transform: Callable[[dict[str, str]], None]
    expect: tuple[str, ...]        # acceptable outcomes (see outcome())


def _kernel_include(f: dict[str, str], header: str) -> None:
    fx.substitute(f, "copytrace.c", INCLUDES, INCLUDES + f"#include <{header}>\n")


def k_panic(f):
    fx.oops_in_copy1_handler(f)


def k_oops_at_load(f):
    fx.substitute(f, "copytrace.c", fx.INIT_START,
            fx.INIT_START + "\n\t{\n\t\tint *volatile null_ptr = NULL;\n\n\t\t*null_ptr = 1;\n\t}\n")


def k_deadlock(f):
    _kernel_include(f, "linux/spinlock.h")
    fx.insert_before(f, "copytrace.c", fx.COPY1_HANDLER, "static DEFINE_SPINLOCK(trap);\n\n")
    fx.substitute(f, "copytrace.c", COPY1_FILTER_BLOCK,
            COPY1_FILTER_BLOCK + "\tspin_lock(&trap);\n\tspin_lock(&trap);\t/* never returns */\n")


def k_never_unloads(f):
    _kernel_include(f, "linux/delay.h")
    fx.substitute(f, "copytrace.c", EXIT_START, EXIT_START + "\tfor (;;)\n\t\tmsleep(1000);\n")


def k_log_flood(f):
    fx.substitute(f, "copytrace.c", fx.INIT_START,
            fx.INIT_START + "\tint k;\n\n\tfor (k = 0; k < 100000; k++)\n"
            "\t\tpr_info(\"flood %06d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\n\", k);\n")


def k_corrupt(f):
    fx.substitute(f, "copytrace.c", COPY4_FILTER_BLOCK,
            COPY4_FILTER_BLOCK + "\tmemset((void *)from, '#', bytes);\t/* overwrites the skb's payload */\n")


def u_hang(f):
    fx.hang_sender(f)


def u_fork_bomb(f):
    fx.insert_before(f, "sender.c", fx.SENDTO, "\tfor (;;)\n\t\tfork();\n")


def u_fill_disk(f):
    fx.substitute(f, "sender.c", "#include <netinet/in.h>\n", "#include <netinet/in.h>\n#include <fcntl.h>\n")
    fx.insert_before(f, "sender.c", fx.SENDTO, """\
	{
		int dfd = open("/var/tmp/fill", O_CREAT | O_WRONLY, 0600);
		off_t off = 0;

		while (dfd >= 0 && posix_fallocate(dfd, off, 64 << 20) == 0)
			off += 64 << 20;
	}
""")


def u_print_gigabytes(f):
    fx.insert_before(f, "sender.c", fx.SENDTO, """\
	{
		static char junk[65536];

		memset(junk, 'x', sizeof(junk));
		for (;;)
			fwrite(junk, 1, sizeof(junk), stdout);
	}
""")


def u_exit_early(f):
    fx.insert_before(f, "receiver.c", fx.RECV, "\texit(3);\n")


FAULTS = [
    Fault("panic", "kernel", "NULL dereference in the copy #1 handler (panic)", k_panic, ("crash",)),
    Fault("oops_at_load", "kernel", "NULL dereference in module init (oops during insmod)", k_oops_at_load,
          ("crash",)),
    Fault("deadlock", "kernel", "spin_lock taken twice in the copy #1 handler", k_deadlock,
          ("crash", "timeout:run")),
    Fault("never_unloads", "kernel", "module exit sleeps forever (rmmod never returns)", k_never_unloads,
          ("timeout:unload", "failed:unload")),
    Fault("log_flood", "kernel", "100,000 lines to the kernel log at load", k_log_flood, ("pass",)),
    Fault("corrupts_probed_memory", "kernel", "copy #4 handler overwrites the skb payload it probes",
          k_corrupt, ("checks",)),
    Fault("hang", "user", "sender sleeps forever before sendto()", u_hang, ("timeout:run",)),
    Fault("fork_bomb", "user", "sender forks without end", u_fork_bomb,
          ("timeout:run", "failed:run", "timeout:collect", "failed:collect")),
    Fault("fill_disk", "user", "sender fills the VM's disk (posix_fallocate in /var/tmp until ENOSPC)",
          u_fill_disk, ("timeout:run", "failed:run", "checks")),
    Fault("print_gigabytes", "user", "sender writes to stdout without end", u_print_gigabytes,
          ("timeout:run",)),
    Fault("exit_early", "user", "receiver exits before recv()", u_exit_early, ("failed:run",)),
]


def texts(fault: Fault | None) -> dict[str, str]:
    """File name -> text: the solution (``None``) or the solution with ``fault`` put in."""
    files = fx.submission_texts("solution")
    if fault is not None:
        fault.transform(files)
    return files


def outcome(result: dict) -> str:
    if (result.get("verdict") or "").startswith("kernel crashed"):
        return "crash"
    for p in result.get("phases", []):
        if p["name"] != "release" and p["status"] in ("timeout", "failed"):
            return f"{p['status']}:{p['name']}"
    return "pass" if result.get("score") == result.get("max_score") else "checks"
