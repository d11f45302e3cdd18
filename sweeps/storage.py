"""A sweep's folder on any storage Ray Tune writes to: a local path, an NFS mount, or a pyarrow
filesystem URI (`s3://bucket/prefix`, `gs://...`). Every path the runner touches goes through
here: whether an earlier run exists, `--restart`'s removal, Tune's restore, the searcher state,
the best-epoch weights and the unlogged-writes file.

S3 credentials and endpoints come from the usual environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible server),
on the driver and on every node.
"""

from __future__ import annotations

import contextlib
import fnmatch
import tempfile
from pathlib import Path

import pyarrow.fs


def is_uri(location: str) -> bool:
    return "://" in location


class StorageFile:
    """One file of the sweep's storage, with the few methods of `pathlib.Path` the runner uses."""

    def __init__(self, storage: "SweepStorage", *parts: str):
        self.storage, self.parts = storage, parts

    def __str__(self) -> str:
        return self.storage.uri_of(*self.parts)

    def exists(self) -> bool:
        return self.storage.exists(*self.parts)

    def read_text(self) -> str:
        with self.storage.fs.open_input_stream(self.storage.path_of(*self.parts)) as f:
            return f.read().decode("utf-8")

    def write_text(self, text: str) -> None:
        path = self.storage.path_of(*self.parts)
        self.storage.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.storage.fs.open_output_stream(path) as f:
            f.write(text.encode("utf-8"))


class SweepStorage:
    """`root/name`, where root is a local path or a filesystem URI.

    Args:
        root: the storage path (`storage_path` of the spec or `--storage-path`).
        name: the sweep's name.
    """

    def __init__(self, root: str, name: str):
        self.root = root.rstrip("/") if is_uri(root) else str(Path(root).resolve())
        self.fs, root_path = pyarrow.fs.FileSystem.from_uri(self.root if is_uri(self.root) else Path(self.root).as_uri())
        self.path = f"{root_path.rstrip('/')}/{name}"
        self.uri = f"{self.root}/{name}"
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def __str__(self) -> str:
        return self.uri

    def uri_of(self, *parts: str) -> str:
        """A location Ray Tune and `BestWeights` take: a local path, or a URI."""
        return "/".join([self.uri, *parts])

    def path_of(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def file(self, *parts: str) -> StorageFile:
        return StorageFile(self, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path_of(*parts)).type != pyarrow.fs.FileType.NotFound

    def folders(self, *parts: str) -> list[str]:
        """The names of the folders directly in `parts` (none if it does not exist)."""
        selector = pyarrow.fs.FileSelector(self.path_of(*parts), allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector) if info.type == pyarrow.fs.FileType.Directory]

    def remove(self, *parts: str) -> None:
        """Delete the folder `parts` (the whole sweep when none) with everything in it."""
        if self.exists(*parts):
            self.fs.delete_dir(self.path_of(*parts))

    @contextlib.contextmanager
    def local_copy(self, folder: str, pattern: str = "*"):
        """A local folder holding the files of `folder` that match `pattern` (the folder itself
        when the storage is local)."""
        if self.local:
            yield self.path_of(folder)
            return
        with tempfile.TemporaryDirectory(prefix="gloss-storage-") as tmp:
            selector = pyarrow.fs.FileSelector(self.path_of(folder), allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(info.base_name, pattern):
                    pyarrow.fs.copy_files(info.path, str(Path(tmp) / info.base_name), source_filesystem=self.fs,
                                          destination_filesystem=pyarrow.fs.LocalFileSystem())
            yield tmp
