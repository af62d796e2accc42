# The guard of an app update, run by main.py before the app is imported (docs/ota.md "On the node").
# Never in a bundle (like main.py, it comes over USB): it is what rolls a bad app back. It holds the
# per-file redo journal ota/journal, always replaced whole (tmp + rename, atomic on LittleFS):
#   line 1: state job trial_s boots total version prev [reason]   state: swap | trial | rollback
#   then one line a file: "n1 <path> <sha256>" new file over an old one, "n0 <path> <sha256>" new
#   file, "o <path>" an old file the new app no longer has. Live file <path>, the old copy ota/old/<path>, the new
#   ota/new/<path>. Each file's (live, old, new) only moves (old,-,new) -> (-,old,new) -> (new,old,-)
# (rollback: back), and each step is one rename the existence tests tell apart: recover() can run
# again from any point a power cut leaves, and ends with the whole old app or the whole new one.
# After the moves every new file is checked against its SHA-256: a file the filesystem lost in a
# power cut (seen under LittleFS in cross-directory renames) rolls the swap back, never a mix.
import os

J = "ota/journal"
LAST = "ota/last"
BOOT_LOOP = 3  # trial boots (other than power-on) without a confirmation: the new app goes
TRIAL_BOOTS_MAX = 10  # trial boots of any cause, power cuts included


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def put(path, text):
    """Replace a small file whole: a power cut leaves the old content or the new."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def mkdirs(path):
    """The directories above path."""
    i = path.find("/")
    while i > 0:
        try:
            os.mkdir(path[:i])
        except OSError:
            pass  # there already
        i = path.find("/", i + 1)


def head():
    """The journal's first line as a list of words, or None without a journal."""
    try:
        with open(J) as f:
            return f.readline().split()
    except OSError:
        return None


def rewrite(h):
    """The journal with first line h (its file lines kept)."""
    with open(J) as src:
        with open(J + ".tmp", "w") as dst:
            src.readline()
            dst.write(" ".join(h) + "\n")
            while True:
                line = src.readline()
                if not line:
                    break
                dst.write(line)
    os.rename(J + ".tmp", J)


def result(job, state, reason, version, prev):
    """The last update's outcome (ota/last), which the app reports once connected and diag shows."""
    import json

    put(LAST, json.dumps({"job": int(job), "state": state, "reason": reason, "version": version, "prev": prev}))


def _move(kind, p, back):
    live, old, new = p, "ota/old/" + p, "ota/new/" + p
    if back:
        if kind == "n0":
            if exists(live):
                os.remove(live)
        elif exists(old):
            os.rename(old, live)  # replaces the new file at once
    elif kind == "o":
        if exists(live) and not exists(old):
            mkdirs(old)
            os.rename(live, old)
    elif exists(new):
        if kind == "n1" and exists(live) and not exists(old):
            mkdirs(old)
            os.rename(live, old)
        mkdirs(live)
        os.rename(new, live)


def recover():
    """Finish a swap or a rollback the journal says is under way; the journal's head after."""
    h = head()
    if not h or h[0] not in ("swap", "rollback"):
        return h
    back = h[0] == "rollback"
    with open(J) as f:
        f.readline()
        while True:
            line = f.readline().split()
            if len(line) < 2:
                break
            _move(line[0], line[1], back)
    if not back:
        bad = _damaged()
        if bad:
            return rollback(h, "swap: %s did not arrive whole; the old app is back" % bad, None)
    if back:
        # The outcome first: a cut before the journal goes repeats the rollback, which is a no-op.
        result(h[1], "rolled_back", " ".join(h[7:]), h[5], h[6])
        os.remove(J)
        return None
    h[0], h[3], h[4] = "trial", "0", "0"
    rewrite(h)
    return h


def _damaged():
    """The first new file whose content is not the journal's SHA-256, or None."""
    import binascii
    import hashlib

    buf = bytearray(512)
    with open(J) as f:
        f.readline()
        while True:
            line = f.readline().split()
            if len(line) < 2:
                return None
            if len(line) == 3:
                h = hashlib.sha256()
                try:
                    with open(line[1], "rb") as g:
                        while True:
                            n = g.readinto(buf)
                            if not n:
                                break
                            h.update(memoryview(buf)[:n])
                except OSError:
                    return line[1]
                if binascii.hexlify(h.digest()).decode() != line[2]:
                    return line[1]


def reset_cause():
    """power_on, watchdog or other; the simulator says it in OPENPOLE_RESET_CAUSE."""
    try:
        import machine

        c = machine.reset_cause()
        return "power_on" if c == machine.PWRON_RESET else "watchdog" if c == machine.WDT_RESET else "other"
    except (ImportError, AttributeError):
        return os.getenv("OPENPOLE_RESET_CAUSE") or "power_on"


def rollback(h, reason, reset):
    """The new app failed its trial: the old one back, then a reset into it."""
    print("ota: job %s rolled back: %s" % (h[1], reason))
    h[0] = "rollback"
    del h[7:]
    h.append(reason)
    rewrite(h)
    recover()
    if reset:
        reset()


def boot(reset):
    """At every boot, before the app: recovery, then a trial boot counted (power-on resets only
    count towards the cap: street lights switch the power); a watchdog reset or too many trial
    boots roll the new app back."""
    h = recover()
    if not h or h[0] != "trial":
        return
    cause = reset_cause()
    boots, total = int(h[3]) + (cause != "power_on"), int(h[4]) + 1
    if cause == "watchdog":
        rollback(h, "watchdog", reset)
    elif boots > BOOT_LOOP or total > TRIAL_BOOTS_MAX:
        rollback(h, "boot_loop", reset)
    else:
        h[3], h[4] = str(boots), str(total)
        rewrite(h)


def crashed(e, started, reset):
    """main.py's guard caught e: during a trial the new app goes (import: ... before the node ran,
    crash: ... after). False when no trial is pending (main.py's crash delays apply)."""
    h = head()
    if not h or h[0] != "trial":
        return False
    first = ("%s: %s" % (type(e).__name__, e)).split("\n")[0][:80]
    rollback(h, ("crash: " if started else "import: ") + first, reset)
    return True


def app_info(version):
    """diag's "app": the running version, the one before the last update, that update's outcome."""
    import json

    try:
        with open(LAST) as f:
            last = json.loads(f.read())
    except (OSError, ValueError):
        last = {}
    return {"version": version, "prev": last.get("prev"),
            "last_update": {"job": last["job"], "state": last["state"], "reason": last["reason"]} if last else None}


def confirm():
    """The new app is healthy: it stays, ota/old keeps the previous one until the next update."""
    h = head()
    if h and h[0] == "trial":
        result(h[1], "confirmed", "", h[5], h[6])
        os.remove(J)
        return True
    return False
