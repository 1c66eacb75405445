"""Compare one suite's outcomes per subject: the project's class against uvicorn's reference class.

Reads what suite_plugin.py wrote. A suite is sound when pytest passed, every test that
passes with the reference class (HttpToolsProtocol, uvicorn_worker.UvicornWorker) passes
with the project's class, and the project's class ran in at least as many tests.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("passed", "failed", "skipped", "xfailed")


@dataclass
class Summary:
    name: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load(path: Path, exitstatus: int) -> dict[str, Any]:
    """One session's report, from the lines suite_plugin.py wrote, as far as the session got."""
    report: dict[str, Any] = {"exitstatus": exitstatus, "items": [], "unfinished": []}
    subjects: dict[str, dict[str, str]] = {}
    started: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for entry in map(json.loads, lines):
        if "subjects" in entry:
            subjects = entry.pop("subjects")
            report.update(entry)
        elif "started" in entry:
            started.append(entry["started"])
        elif "finished" in entry:
            nodeid = entry["finished"]
            fallback = {"key": nodeid, "subject": "", "role": ""}
            report["items"].append({"nodeid": nodeid, "outcome": entry["outcome"], **subjects.get(nodeid, fallback)})
    finished = {item["nodeid"] for item in report["items"]}
    report["unfinished"] = [nodeid for nodeid in started if nodeid not in finished]
    return report


def ran(counts: Counter[str]) -> int:
    return counts["passed"] + counts["failed"]


def summarize(name: str, report: dict[str, Any]) -> Summary:
    summary = Summary(name)
    items: list[dict[str, str]] = report["items"]
    counts: dict[str, Counter[str]] = {}
    roles: dict[str, str] = {}
    by_key: dict[str, dict[str, list[dict[str, str]]]] = {}
    for item in items:
        subject = item.get("subject") or "(no subject parameter)"
        counts.setdefault(subject, Counter())[item["outcome"]] += 1
        roles.setdefault(subject, item.get("role", ""))
        if item.get("role"):
            by_key.setdefault(item["key"], {}).setdefault(item["role"], []).append(item)

    summary.lines.append(f"{name}: pytest exit status {report['exitstatus']}, {len(items)} tests")
    summary.lines.append(f"  {'subject':<36}{'role':<11}" + "".join(f"{o:>9}" for o in OUTCOMES))
    for subject in sorted(counts, key=lambda s: (roles[s] == "", roles[s], s)):
        row = "".join(f"{counts[subject][o]:>9}" for o in OUTCOMES)
        summary.lines.append(f"  {subject:<36}{roles[subject] or '-':<11}{row}")
    for label, names in (("mock loops given call_soon()", report.get("patched_loops", [])),
                         ("also run with the project's class in place of HttpToolsProtocol",
                          report.get("substituted", []))):  # fmt: skip
        if names:
            summary.lines.append(f"  {label}: {len(names)}")
            summary.lines.extend(f"    {n}" for n in names)

    for nodeid in report.get("unfinished", []):
        summary.problems.append(f"{name}: started and never finished (it hung or crashed the session): {nodeid}")
    if report["exitstatus"] != 0:
        failed = [item["nodeid"] for item in items if item["outcome"] == "failed"]
        summary.problems.append(f"{name}: pytest exited {report['exitstatus']}; failed: {len(failed)}")
        summary.problems.extend(f"  {nodeid}" for nodeid in failed)
    for nodeid in report.get("not_substituted", []):
        summary.problems.append(f"{name}: names HttpToolsProtocol but is parametrized, not run with ours: {nodeid}")

    reference = Counter[str]()
    project = Counter[str]()
    for key, by_role in sorted(by_key.items()):
        for item in by_role.get("reference", []):
            reference[item["outcome"]] += 1
        for item in by_role.get("project", []):
            project[item["outcome"]] += 1
        passed_reference = [i for i in by_role.get("reference", []) if i["outcome"] == "passed"]
        if not passed_reference:
            continue
        theirs = passed_reference[0]["subject"]
        mine = by_role.get("project", [])
        if not mine:
            summary.problems.append(f"{name}: passes with {theirs}, never run with the project's class: {key}")
        for item in mine:
            if item["outcome"] != "passed":
                summary.problems.append(
                    f"{name}: passes with {theirs}, {item['outcome']} with {item['subject']}: {item['nodeid']}"
                )
    if ran(reference) == 0:
        summary.problems.append(f"{name}: no test ran with uvicorn's reference class: nothing was compared")
    if ran(project) < ran(reference):
        summary.problems.append(
            f"{name}: the project's class ran in {ran(project)} tests, uvicorn's reference class in {ran(reference)}"
        )
    return summary
