"""Files that hold secrets (saved sessions, the NSS key log), and the warnings about them.

Theory of operation. A saved :class:`~dtlskit.Session` holds a master secret and a key log
holds every session's traffic secrets: whoever reads either can decrypt the traffic. So:

- :func:`write_private_file` (sessions) writes a new file, mode 0600, next to the target
  (``mkstemp``: ``O_CREAT|O_EXCL``, so never through a link), flushes it to disk and renames
  it over the target with ``os.replace``. Readers see the old file or the new one, never a
  partial one; a failure leaves the target untouched and removes the temporary file. The mode
  of an existing file is not inherited (it was, before: a 0644 file stayed 0644). A target
  that is a symbolic link is refused: writing through it would put the secret wherever the
  link points, and silently replacing the link would surprise whoever made it.
- :func:`open_private_append` (key log) opens ``O_WRONLY|O_APPEND|O_CREAT|O_NOFOLLOW``, mode
  0600. It refuses a symbolic link, anything but a regular file, a file owned by another user,
  and an existing file that its group or others may read or write (the secrets would leak, or
  be interleaved with someone else's lines): the error says to ``chmod 600`` it or remove it.
  Appending keeps working across several processes (``O_APPEND`` writes are placed at the end).
- :func:`security_warning` logs on the ``dtlskit.security`` logger at WARNING, once per
  message and process. A library does not print; Python's last-resort handler still shows a
  WARNING on stderr when the application configured no logging, and the ``dtlskit`` command
  shows it at its default verbosity. It is used when a client does not verify the server
  (``verify_mode=CERT_NONE``) and when a key log is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile

from .exceptions import ConfigurationError

__all__ = ["open_private_append", "security_warning", "write_private_file"]

logger = logging.getLogger("dtlskit.security")

_warned: set[str] = set()
_MAX_REMEMBERED = 1024  # distinct warnings remembered (bounded: names come from configurations)


def security_warning(message: str) -> None:
    """Log ``message`` at WARNING on ``dtlskit.security``, once per process."""
    if message in _warned:
        return
    if len(_warned) >= _MAX_REMEMBERED:
        _warned.clear()
    _warned.add(message)
    logger.warning("%s", message)


def write_private_file(path: str | os.PathLike[str], data: bytes, what: str) -> None:
    """Replace ``path`` with ``data`` atomically, readable by the owner only (mode 0600).

    Raises :class:`ConfigurationError` naming ``what`` and ``path`` when ``path`` is a symbolic
    link or not a regular file, or when the file cannot be written (then nothing changed).
    """
    target = os.fspath(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigurationError(f"cannot write {what} {target}: {exc.strerror}") from exc
    else:
        if stat.S_ISLNK(info.st_mode):
            raise ConfigurationError(
                f"refusing to write {what} {target}: it is a symbolic link (it holds secrets; "
                "give the real path, or remove the link)"
            )
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"refusing to write {what} {target}: not a regular file")
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write {what} {target}: {exc.strerror} (a temporary file in {directory} "
            "is needed to replace it atomically)"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp: mode 0600, O_EXCL
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)  # renames the link itself, never writes through one
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise ConfigurationError(f"cannot write {what} {target}: {exc.strerror}") from exc
        raise
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    """Make the rename durable (best effort: some file systems cannot fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_private_append(path: str | os.PathLike[str], what: str) -> int:
    """A file descriptor appending to ``path`` (created 0600). The caller closes it.

    Raises :class:`ConfigurationError` when ``path`` is a symbolic link, not a regular file,
    owned by someone else, or open to its group or others (mode & 0o077).
    """
    target = os.fspath(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(target, flags, 0o600)
    except OSError as exc:
        if os.path.islink(target):
            raise ConfigurationError(
                f"refusing to append to {what} {target}: it is a symbolic link (it holds "
                "secrets; give the real path, or remove the link)"
            ) from exc
        raise ConfigurationError(
            f"{what} {target} cannot be opened for appending: {exc.strerror}"
        ) from exc
    try:
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "it is not a regular file"
        elif info.st_uid != os.geteuid():
            problem = f"it belongs to another user (uid {info.st_uid})"
        elif info.st_mode & 0o077:
            problem = (
                f"its mode {stat.S_IMODE(info.st_mode):04o} lets others read or write it "
                "(chmod 600 it, or remove it to have it created 0600)"
            )
        if problem is not None:
            raise ConfigurationError(f"refusing to append to {what} {target}: {problem}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
