"""coordinator.merge.screen: what of a merge request may reach main, and the finding for each refused path."""

from __future__ import annotations

import hashlib

import pytest

from coordinator.merge.models import MergeRequest
from coordinator.merge.screen import MainState, Screened, bad_path_reason, is_git_metadata_name, screen_request
from sandbox_agents.verifiers.models import Severity


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request(
    component: str = "web",
    files: dict[str, bytes] | None = None,
    links: dict[str, str] | None = None,
    deleted: tuple[str, ...] = (),
) -> MergeRequest:
    return MergeRequest(
        build_id="b1",
        component=component,
        slot=component,
        files={p: sha(b) for p, b in (files or {}).items()},
        links=links or {},
        deleted=deleted,
    )


#: main after api merged api/server.py and web merged web/index.html and web/app.js.
MAIN = MainState(
    files={"api/server.py": sha(b"api"), "web/index.html": sha(b"page"), "web/app.js": sha(b"js")},
    owners={"api/server.py": "api", "web/index.html": "web", "web/app.js": "web"},
)


def refused(screened: Screened) -> dict[str, str]:
    """Refused path → rule; every refusal is a warning naming its path."""
    assert all(f.severity == Severity.WARNING and f.file and f.file in f.message for f in screened.findings)
    return {f.file or "": f.rule for f in screened.findings}


def test_git_metadata_at_any_depth_and_in_any_spelling_is_refused_and_named() -> None:
    paths = [".git/hooks/pre-commit", ".git/refs/heads/main", "web/.git/config", ".git", "web/.GIT/HEAD", "git~1/x"]
    screened = screen_request(request(files={p: b"evil" for p in [*paths, "web/app.js"]}), MAIN)
    assert refused(screened) == {p: "merge.git_metadata" for p in paths}
    assert screened.files == {"web/app.js": sha(b"evil")}
    assert "only the merge gate writes it" in screened.findings[0].message
    assert is_git_metadata_name(".git.") and is_git_metadata_name(".Git ") and not is_git_metadata_name(".github")


def test_root_gitattributes_gitignore_and_any_gitmodules_are_refused() -> None:
    files = {".gitattributes": b"* export-ignore\n", ".gitignore": b"*\n", "web/.gitmodules": b"[submodule]"}
    screened = screen_request(request(files={**files, "web/new.js": b"ok"}), MAIN)
    assert refused(screened) == {p: "merge.git_control" for p in files}
    assert screened.files == {"web/new.js": sha(b"ok")}
    messages = {f.file: f.message for f in screened.findings}
    assert "every component's files" in messages[".gitattributes"]
    assert "submodules" in messages["web/.gitmodules"]
    assert screen_request(request(files={".GITIGNORE": b"*"}), MAIN).findings  # case-insensitive checkouts


def test_a_gitattributes_is_kept_in_a_directory_holding_only_the_components_own_files() -> None:
    mine = screen_request(request(files={"web/.gitattributes": b"*.js text eol=lf\n"}), MAIN)
    assert mine.findings == [] and list(mine.files) == ["web/.gitattributes"]
    first_merge = screen_request(request("db", files={"db/.gitignore": b"*.sqlite3\n", "db/schema.sql": b"x"}), MAIN)
    assert first_merge.findings == [] and sorted(first_merge.files) == ["db/.gitignore", "db/schema.sql"]


def test_a_gitattributes_over_another_components_files_is_refused() -> None:
    main = MainState(
        files={**MAIN.files, "web/api-client.js": sha(b"c")}, owners={**MAIN.owners, "web/api-client.js": "api"}
    )
    screened = screen_request(request(files={"web/.gitattributes": b"* export-ignore\n"}), main)
    assert refused(screened) == {"web/.gitattributes": "merge.git_control"}
    assert "web/api-client.js, which api merged" in screened.findings[0].message


def test_a_file_under_another_components_gitignore_is_refused() -> None:
    main = MainState(files={**MAIN.files, "web/.gitignore": sha(b"*")}, owners={**MAIN.owners, "web/.gitignore": "web"})
    screened = screen_request(request("api", files={"web/api-client.js": b"c", "api/extra.py": b"x"}), main)
    assert refused(screened) == {"web/api-client.js": "merge.git_control"}
    assert list(screened.files) == ["api/extra.py"]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("../../etc/passwd", "leaves the repository"),
        ("../api/server.py", "which api merged"),
        ("../api", "which api merged"),
        ("missing.js", "nothing in main"),
        ("..", "root"),
        ("up/../../api/server.py", "passes through the symlink web/up"),
    ],
)
def test_a_symlink_pointing_out_of_the_components_files_is_refused(target: str, why: str) -> None:
    main = MainState(files=MAIN.files, links={"web/up": ".."}, owners={**MAIN.owners, "web/up": "web"})
    screened = screen_request(request(links={"web/link": target}), main)
    assert refused(screened) == {"web/link": "merge.symlink"}
    assert why in screened.findings[0].message and screened.links == {}


def test_a_symlink_to_the_components_own_file_or_directory_is_kept() -> None:
    links = {"web/index.htm": "index.html", "web/static": "../web", "web/new": "lib/new.js"}
    screened = screen_request(request(files={"web/lib/new.js": b"n"}, links=links), MAIN)
    assert screened.findings == [] and screened.links == links


def test_paths_that_are_not_clean_relative_paths_are_refused() -> None:
    for path in ["../x", "/etc/x", "a//b", "a/./b", "web/", "a\nb", "."]:
        assert bad_path_reason(path) is not None, path
    assert bad_path_reason("web/index.html") is None
    screened = screen_request(request(files={"../escape": b"x", "web/a\x01": b"x"}, deleted=("/etc/x",)), MAIN)
    assert refused(screened) == {
        "../escape": "merge.bad_path",
        "web/a\x01": "merge.bad_path",
        "/etc/x": "merge.bad_path",
    }


def test_a_file_where_the_tree_has_a_directory_or_under_a_file_is_refused() -> None:
    screened = screen_request(request(files={"web": b"x", "api/server.py/x": b"y", "web/ok.js": b"z"}), MAIN)
    assert refused(screened) == {"web": "merge.path_conflict", "api/server.py/x": "merge.path_conflict"}
    replaced = screen_request(request(files={"api/server.py/x": b"y"}, deleted=("api/server.py",)), MAIN)
    assert replaced.findings == [] and list(replaced.files) == ["api/server.py/x"]


def test_junk_is_left_out_silently_and_unchanged_files_are_not_changes() -> None:
    files = {"web/index.html": b"page", "node_modules/x/.gitattributes": b"*", "web/app.pyc": b"x", "web/a.js": b"a"}
    screened = screen_request(request(files=files), MAIN)
    assert screened.findings == [] and screened.files == {"web/a.js": sha(b"a")}


def test_a_path_cannot_be_both_a_file_and_a_symlink() -> None:
    with pytest.raises(ValueError, match="both a file and a symlink"):
        request(files={"web/x": b"x"}, links={"web/x": "y"})
