"""Tell interested sessions when a folder changes.

Changes made by this process are reported at once (the store calls ``on_change``).  Changes
made by another process (a second mailstack, a delivery agent, rsync) are seen through
inotify on the folder's ``new/``, ``cur/`` and its UID log, or, where inotify is missing, by
polling their timestamps every second.  Notifications are coalesced: a burst of deliveries
wakes a subscriber once.  Subscribers get no details; they take a new snapshot.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

try:
    from twisted.internet import inotify
    from twisted.python import filepath
except ImportError:  # pragma: no cover - non-Linux
    inotify = None


class Subscription:
    def __init__(self, watcher: "FolderWatcher", path: str, callback: Callable[[], None]):
        self.watcher, self.path, self.callback = watcher, path, callback

    def cancel(self) -> None:
        self.watcher._unsubscribe(self)


class FolderWatcher:
    COALESCE = 0.05

    def __init__(self, store, reactor=None, poll_interval: float = 1.0, use_inotify: bool = True):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.poll_interval = poll_interval
        self._subs: dict[str, list[Subscription]] = {}
        self._pending: dict[str, object] = {}
        self._stamps: dict[str, tuple] = {}
        self._file_watches: dict[str, dict[str, list]] = {}
        self._notifier = None
        if use_inotify and inotify is not None:
            try:
                self._notifier = inotify.INotify(reactor)
                self._notifier.startReading()
            except Exception as e:  # no inotify instances left, unsupported fs, ...
                log.warn("inotify unavailable ({error}); polling folders", error=e)
                self._notifier = None
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = reactor
        store.on_change = self.changed_from_any_thread

    def subscribe(self, folder_path: str, callback: Callable[[], None]) -> Subscription:
        sub = Subscription(self, folder_path, callback)
        subs = self._subs.setdefault(folder_path, [])
        if not subs:
            self._watch(folder_path)
        subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.path, [])
        if sub in subs:
            subs.remove(sub)
        if not subs and sub.path in self._subs:
            del self._subs[sub.path]
            self._unwatch(sub.path)

    def changed_from_any_thread(self, folder_path: str) -> None:
        self.reactor.callFromThread(self.changed, folder_path)

    def changed(self, folder_path: str) -> None:
        if folder_path in self._subs and folder_path not in self._pending:
            self._pending[folder_path] = self.reactor.callLater(self.COALESCE, self._fire, folder_path)

    def _fire(self, folder_path: str) -> None:
        self._pending.pop(folder_path, None)
        for sub in list(self._subs.get(folder_path, [])):
            try:
                sub.callback()
            except Exception:
                log.failure("folder change callback failed")

    # -- cross-process ---------------------------------------------------------------------

    def _watch(self, path: str) -> None:
        if self._notifier is not None:
            # new/ and cur/: entries come, go and are renamed (flags); a message file is never
            # written in place, so no IN_MODIFY there, which would make the kernel mark every
            # cached entry of a 100,000-message cur/ (14 ms a SELECT).  The folder itself:
            # its UID log and keywords file are appended to.
            entries = inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE
            try:
                for sub in ("new", "cur", ""):
                    target = filepath.FilePath(os.path.join(path, sub) if sub else path)
                    mask = entries if sub else entries | inotify.IN_MODIFY
                    self._notifier.watch(target, mask=mask, callbacks=[lambda _w, _p, _m, path=path: self.changed(path)])
                return
            except Exception as e:
                log.warn("inotify watch on {path} failed ({error}); polling it", path=path, error=e)
        self._stamps[path] = self._stamp(path)
        if not self._poller.running:
            self._poller.start(self.poll_interval, now=False)

    def _unwatch(self, path: str) -> None:
        if self._notifier is not None:
            for sub in ("new", "cur", ""):
                try:
                    self._notifier.ignore(filepath.FilePath(os.path.join(path, sub) if sub else path))
                except KeyError:
                    pass
        self._stamps.pop(path, None)
        if not self._stamps and self._poller.running:
            self._poller.stop()

    @staticmethod
    def _stamp(path: str) -> tuple:
        out = []
        for name in ("new", "cur", "mailstack-uidlist"):
            try:
                st = os.stat(os.path.join(path, name))
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def _poll(self) -> None:
        for path in list(self._stamps):
            stamp = self._stamp(path)
            if stamp != self._stamps[path]:
                self._stamps[path] = stamp
                self.changed(path)

    def watch_file(self, watched) -> None:
        """Call ``watched.changed()`` whenever the file at ``watched.path`` is replaced or written.

        The directory is watched, not the file, because editors and the CLI replace files by
        rename.  Without inotify nothing is set up and ``watched`` keeps checking by ``stat``.
        """
        if self._notifier is None:
            return
        directory = os.path.dirname(os.path.abspath(watched.path))
        names = self._file_watches.get(directory)
        if names is None:
            names = self._file_watches[directory] = {}
            mask = inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_ATTRIB

            def event(_w, path, _mask):
                for target in names.get(os.fsdecode(path.basename()), ()):
                    target.changed()

            try:
                self._notifier.watch(filepath.FilePath(directory), mask=mask, callbacks=[event])
            except Exception as e:
                del self._file_watches[directory]
                log.warn("cannot watch {path} ({error}); checking it on each use", path=watched.path, error=e)
                return
        names.setdefault(os.path.basename(watched.path), []).append(watched)
        watched.watched = True
        watched.changed()

    def stop(self) -> None:
        if self._poller.running:
            self._poller.stop()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
