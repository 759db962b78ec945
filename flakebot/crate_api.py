"""A crate's public API as the coder's model reads it: parsed from its source with Rust's grammar.

Rust's documentation is the point of starting from a Rust crate: the signatures and doc comments
of a library say how to call it. This module parses the library's source with tree-sitter's Rust
grammar (a real parser, not patterns over text), follows its modules (`mod x;` to `x.rs` or
`x/mod.rs`, `#[path]` too), and collects the public items: functions, structs (with their public
fields), enums, traits (with their methods), type aliases, constants, `pub use` re-exports,
exported macros, and the public methods of inherent `impl` blocks, each with its signature as
written and the first paragraph of its docs. Items of `#[cfg(test)]` modules and `#[doc(hidden)]`
items are left out. The crate-level docs (`//!`), where the usage examples usually are, come
first. The whole is bounded in size: the root module's items first, then deeper modules.

Files are read through flakebot.fork_files, so a fork's planted symlink reads nothing of the host.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import tree_sitter_rust
from tree_sitter import Language, Node, Parser

from flakebot import fork_files
from flakebot.fork_files import UnsafePath

RUST = Language(tree_sitter_rust.language())
MAX_FILES = 200
FILE_BYTES = 1_000_000
DOC_CHARS = 240
CRATE_DOC_CHARS = 2_500
SIGNATURE_CHARS = 400

_ITEM_KINDS = {
    "function_item": "fn",
    "struct_item": "struct",
    "enum_item": "enum",
    "trait_item": "trait",
    "type_item": "type",
    "const_item": "const",
    "static_item": "static",
    "use_declaration": "use",
    "union_item": "union",
}


@dataclass(frozen=True)
class ApiItem:
    module: str  # e.g. `base64::encode`; the crate's name for the root
    kind: str
    signature: str
    docs: str


@dataclass(frozen=True)
class CrateApi:
    crate: str
    docs: str
    items: tuple[ApiItem, ...]

    def render(self, max_chars: int) -> str:
        """The API as text for a prompt, at most `max_chars` long."""
        lines = [f"Crate documentation of `{self.crate}`:", self.docs[:CRATE_DOC_CHARS], ""]
        used = sum(len(line) + 1 for line in lines)
        shown = 0
        module = None
        for item in self.items:
            block = []
            if item.module != module:
                block.append(f"// in {item.module}")
            block.append(item.signature)
            if item.docs:
                block.append("    /// " + item.docs.replace("\n", "\n    /// "))
            size = sum(len(line) + 1 for line in block)
            if used + size > max_chars:
                break
            lines += block
            used += size
            shown += 1
            module = item.module
        if shown < len(self.items):
            lines.append(f"// ... and {len(self.items) - shown} more public items")
        return "\n".join(lines).strip()


def library_root(package: Path) -> str | None:
    """The library's root file relative to the package (`[lib] path`, else src/lib.rs)."""
    try:
        manifest = tomllib.loads(fork_files.read_text(package, "Cargo.toml") or "")
    except (tomllib.TOMLDecodeError, UnsafePath):
        return None
    lib = manifest.get("lib")
    if isinstance(lib, dict) and isinstance(lib.get("path"), str):
        return str(PurePosixPath(lib["path"]))
    return "src/lib.rs" if fork_files.kind(package, "src/lib.rs") == "file" else None


def public_api(package: Path, crate: str) -> CrateApi | None:
    """The public API of the library in the package at `package`; None if it has no library."""
    root = library_root(package)
    if root is None:
        return None
    parser = Parser(RUST)
    items: list[ApiItem] = []
    crate_docs = ""
    pending: deque[tuple[str, str]] = deque([(root, crate)])
    seen: set[str] = set()
    while pending and len(seen) < MAX_FILES:
        relative, module = pending.popleft()
        if relative in seen:
            continue
        seen.add(relative)
        try:
            source = fork_files.read_bytes(package, relative, limit=FILE_BYTES)
        except UnsafePath:
            continue
        if source is None:
            continue
        tree = parser.parse(source)
        walker = _Module(package, source, relative, module, pending)
        walker.items(tree.root_node)
        items += walker.found
        if relative == root:
            crate_docs = walker.inner_docs
    return CrateApi(crate=crate, docs=crate_docs, items=tuple(items))


class _Module:
    """The public items of one module's source (and of its inline submodules)."""

    def __init__(
        self,
        package: Path,
        source: bytes,
        relative: str,
        module: str,
        pending: deque[tuple[str, str]],
    ) -> None:
        self.package = package
        self.source = source
        self.relative = relative
        self.module = module
        self.pending = pending
        self.found: list[ApiItem] = []
        self.inner_docs = ""

    def text(self, node: Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode("utf-8", errors="replace")

    def items(self, container: Node, module: str | None = None) -> None:
        module = module or self.module
        docs: list[str] = []
        attributes: list[str] = []
        inner: list[str] = []
        for node in container.named_children:
            if node.type == "inner_attribute_item" and module == self.module:
                included = re.search(r'doc\s*=\s*include_str!\(\s*"([^"]+)"', self.text(node))
                if included:  # `#![doc = include_str!("../README.md")]`: the crate docs
                    inner.append(self.included(included.group(1)))
                continue
            if node.type in ("line_comment", "block_comment"):
                text = self.text(node)
                if text.startswith(("//!", "/*!")):
                    inner.append(_doc_text(text))
                elif text.startswith(("///", "/**")) and not text.startswith(("////", "/***")):
                    docs.append(_doc_text(text))
                continue
            if node.type == "attribute_item":
                attributes.append(self.text(node))
                continue
            self.item(node, module, docs, attributes)
            docs, attributes = [], []
        if module == self.module and inner:
            self.inner_docs = "\n".join(inner).strip()

    def included(self, target: str) -> str:
        relative = posixpath.normpath(str(PurePosixPath(self.relative).parent / target))
        try:
            return fork_files.read_text(self.package, relative, limit=FILE_BYTES) or ""
        except UnsafePath:
            return ""

    def item(self, node: Node, module: str, docs: list[str], attributes: list[str]) -> None:
        joined = " ".join(attributes)
        if "cfg(test)" in joined or "doc(hidden)" in joined:
            return
        if node.type == "mod_item":
            self.submodule(node, module, attributes)
            return
        if node.type == "macro_definition" and "macro_export" in joined:
            name = node.child_by_field_name("name")
            signature = f"macro_rules! {self.text(name) if name else '?'}"
            self.found.append(ApiItem(module, "macro", signature, _first_paragraph(docs)))
            return
        if node.type == "impl_item":
            self.implementation(node, module, docs)
            return
        kind = _ITEM_KINDS.get(node.type)
        if kind is None or not _is_pub(node, self.text):
            return
        self.found.append(ApiItem(module, kind, self.signature(node), _first_paragraph(docs)))

    def signature(self, node: Node) -> str:
        if node.type in ("function_item", "function_signature_item"):
            body = node.child_by_field_name("body")
            end = body.start_byte if body is not None else node.end_byte
            return _squash(self.source[node.start_byte : end].decode("utf-8", "replace"))
        if node.type == "struct_item":
            body = node.child_by_field_name("body")
            if body is not None and body.type == "field_declaration_list":
                head = self.source[node.start_byte : body.start_byte].decode("utf-8", "replace")
                fields = [
                    _squash(self.text(field))
                    for field in body.named_children
                    if field.type == "field_declaration" and _is_pub(field, self.text)
                ]
                return _squash(head) + " { " + ", ".join(fields) + (" }" if fields else "}")
        if node.type == "trait_item":
            body = node.child_by_field_name("body")
            if body is not None:
                head = _squash(self.source[node.start_byte : body.start_byte].decode())
                members = [
                    self.signature(member) + ";"
                    for member in body.named_children
                    if member.type in ("function_item", "function_signature_item")
                ]
                return head + " { " + " ".join(members) + " }"
        if node.type in ("const_item", "static_item"):
            value = node.child_by_field_name("value")
            end = value.start_byte if value is not None else node.end_byte
            head = _squash(self.source[node.start_byte : end].decode("utf-8", "replace"))
            return head.rstrip("= ") + (" = ...;" if value is not None else "")
        return _squash(self.text(node))[:SIGNATURE_CHARS]

    def implementation(self, node: Node, module: str, docs: list[str]) -> None:
        body = node.child_by_field_name("body")
        head = _squash(self.source[node.start_byte : (body or node).start_byte].decode())
        if node.child_by_field_name("trait") is not None:
            self.found.append(ApiItem(module, "impl", head, ""))
            return
        if body is None:
            return
        member_docs: list[str] = []
        for member in body.named_children:
            if member.type == "line_comment" and self.text(member).startswith("///"):
                member_docs.append(_doc_text(self.text(member)))
                continue
            if member.type == "function_item" and _is_pub(member, self.text):
                signature = f"{head} {{ {self.signature(member)} }}"
                self.found.append(ApiItem(module, "fn", signature, _first_paragraph(member_docs)))
            if member.type != "attribute_item":
                member_docs = []

    def submodule(self, node: Node, module: str, attributes: list[str]) -> None:
        name_node = node.child_by_field_name("name")
        if name_node is None:
            return
        name = self.text(name_node)
        path = f"{module}::{name}"
        body = node.child_by_field_name("body")
        if body is not None:
            self.items(body, path)
            return
        for attribute in attributes:
            chosen = re.search(r'path\s*=\s*"([^"]+)"', attribute)
            if chosen:
                self.pending.append((str(_module_dir(self.relative) / chosen.group(1)), path))
                return
        directory = _module_dir(self.relative)
        for candidate in (directory / f"{name}.rs", directory / name / "mod.rs"):
            self.pending.append((str(candidate), path))


def _module_dir(relative: str) -> PurePosixPath:
    """Where a file's `mod x;` modules live: beside lib.rs/main.rs/mod.rs, else in a dir of its
    own name (src/a.rs declares src/a/x.rs)."""
    path = PurePosixPath(relative)
    if path.name in ("lib.rs", "main.rs", "mod.rs"):
        return path.parent
    return path.parent / path.stem


def _is_pub(node: Node, text: object) -> bool:
    for child in node.children:
        if child.type == "visibility_modifier":
            return text(child).strip() == "pub"  # type: ignore[operator, no-any-return]
    return False


def _doc_text(comment: str) -> str:
    for prefix in ("///", "//!"):
        if comment.startswith(prefix):
            return comment[len(prefix) :].removeprefix(" ").rstrip()
    return comment.removeprefix("/**").removeprefix("/*!").removesuffix("*/").strip()


def _first_paragraph(docs: list[str]) -> str:
    text = "\n".join(docs).strip()
    first = text.split("\n\n", 1)[0].strip()
    return first[:DOC_CHARS] + ("..." if len(first) > DOC_CHARS else "")


def _squash(text: str) -> str:
    return " ".join(text.split())
