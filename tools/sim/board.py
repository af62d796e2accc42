"""`openpole sim board`: a virtual ESP32 on an RFC 2217 serial endpoint, for the whole flashing flow.

What a technician's USB cable reaches, down to the lines esptool drives:
- The auto-reset circuit of an ESP32 dev board: EN is pulled low while RTS is asserted and DTR is
  not; IO0 while DTR is asserted and RTS is not. esptool's classic DTR/RTS sequence lands in
  download mode, an EN pulse alone boots the flash (see Board.lines for the timing).
- Download mode: the ESP32 ROM bootloader's serial protocol, enough for esptool v5 and its stub
  (sim.esp_rom).
- A 4 MB flash kept in a file. On a boot from flash the board runs what was flashed: a firmware
  image (0xE9 header at 0x1000) stands for MicroPython, and the node's filesystem partition boots
  under the MicroPython Unix port (tools/sim/mp_boot_image.py, writes going to the flash file),
  with the node's console on this same serial endpoint and the simulated sensors of sim.world.
  Flash it with `openpole flash --sim`: the app compiled for the Unix port, with the simulated
  hardware layer, as `image build --sim` makes it. No firmware: the ROM's "flash read err".

Faults a technician meets, as options: no auto-reset circuit (the BOOT button is needed), another
chip, a smaller flash, a flash write that fails at an address, a node that never answers.
"""

import hashlib
import mmap
import os
import signal
import socket
import subprocess
import threading
import time
import tty
from pathlib import Path

from ..common import parse_hostport
from ..errors import UserError
from . import node as simnode
from .esp_rom import ESP32_MAGIC, JEDEC_SIZE, Rom, slip

FLASH_BYTES = 4 * 1024 * 1024
RESET_HOLD_S = 0.002  # EN must stay low this long to reset the chip (the RC on EN)

BOOT_LOG = {
    "download": b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x1 (POWERON_RESET),"
                b"boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n",
    "flash": b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
}


def stand_in_firmware(path, chip="esp32"):
    """A valid ESP app image for `chip` (esptool's own image writer): it stands for the MicroPython
    firmware on a virtual board, which runs the Unix port in its place."""
    from esptool.bin_image import ELFSection
    from esptool.targets import CHIP_DEFS

    img = CHIP_DEFS[chip].BOOTLOADER_IMAGE()
    img.entrypoint = 0x40080000
    img.segments = [ELFSection(b".iram0.text", 0x40080000, b"openpole virtual board".ljust(4096, b"\0"), 0)]
    img.save(str(path))
    return Path(path)


class Lines:
    """The serial side pyserial's RFC 2217 PortManager drives: DTR/RTS go to the board's reset circuit."""

    def __init__(self, board):
        self.board = board
        self._dtr = self._rts = False
        self.baudrate, self.bytesize, self.parity, self.stopbits = 115200, 8, "N", 1
        self.xonxoff = self.rtscts = self.break_condition = False
        self.cts = self.dsr = self.ri = self.cd = False

    @property
    def dtr(self):
        return self._dtr

    @dtr.setter
    def dtr(self, v):
        self._dtr = bool(v)
        self.board.lines(self._dtr, self._rts)

    @property
    def rts(self):
        return self._rts

    @rts.setter
    def rts(self, v):
        self._rts = bool(v)
        self.board.lines(self._dtr, self._rts)

    def reset_input_buffer(self):
        pass

    def reset_output_buffer(self):
        pass


class Board:
    """One virtual ESP32: its flash file, reset circuit, ROM loader and the node it boots."""

    def __init__(self, flash_path, world, chip="esp32", flash_mb=4, auto_reset=True, fail_write_at=None,
                 mute=False, heap="192k", vm=None):
        self.flash_path = Path(flash_path)
        if not self.flash_path.exists() or self.flash_path.stat().st_size != FLASH_BYTES:
            self.flash_path.write_bytes(b"\xff" * FLASH_BYTES)  # a new module's flash is erased
        self._file = open(self.flash_path, "r+b")
        self.flash = mmap.mmap(self._file.fileno(), FLASH_BYTES)
        self.world = world
        self.flash_mb, self.auto_reset, self.fail_write_at, self.mute = flash_mb, auto_reset, fail_write_at, mute
        self.heap, self.vm = heap, vm
        if chip == "esp32":
            self.magic, self.chip_id = ESP32_MAGIC, None
        else:  # a later chip answers GET_SECURITY_INFO with its chip id
            from esptool.targets import CHIP_DEFS

            self.magic, self.chip_id = 0, CHIP_DEFS[chip].IMAGE_CHIP_ID
        mac = hashlib.sha256(str(self.flash_path.resolve()).encode()).digest()[:3]
        self.mac = bytes([0x24, 0x0A, 0xC4]) + mac  # an Espressif OUI
        # eFuse words 1 and 2 hold the MAC (esptool reads them as >II and drops the CRC byte pair)
        w2 = int.from_bytes(b"\0\0" + self.mac[:2], "big")
        w1 = int.from_bytes(self.mac[2:], "big")
        self.efuse = [0, w1, w2, (1 << 9) | (1 << 15), 0, 1 << 20, 0]  # D0WD, revision bits for ECO3
        self.rom = None
        self.mode = None
        self._rx = bytearray()
        self._send = None  # the connected client's writer
        self._send_lock = threading.Lock()
        self._lock = threading.RLock()
        self._en_low_at = None
        self.proc = None
        self._pty = None
        self.boots = 0
        self.closed = False

    # --- the serial line ---
    def attach(self, send):
        with self._send_lock:
            self._send = send

    def tx(self, data):
        with self._send_lock:
            if self._send and data:
                try:
                    self._send(data)
                except OSError:
                    self._send = None

    def rx(self, data):
        with self._lock:
            if self.mode == "download":
                self._rx += data
                self._frames()
            elif self.mode == "flash" and self._pty is not None and not self.mute:
                try:
                    os.write(self._pty, data)
                except OSError:
                    pass

    def _frames(self):
        while True:
            start = self._rx.find(b"\xc0")
            if start < 0:
                self._rx.clear()
                return
            end = self._rx.find(b"\xc0", start + 1)
            if end < 0:
                del self._rx[:start]
                return
            raw = bytes(self._rx[start + 1:end])
            del self._rx[:end]  # the closing 0xC0 may open the next frame
            if not raw:
                continue
            frame = raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
            for out in self.rom.handle(frame):
                self.tx(slip(out))

    # --- the reset circuit ---
    def lines(self, dtr, rts):
        """EN is held low while RTS is asserted and DTR is not. Leaving that state with DTR asserted
        is esptool's bootloader sequence (IO0 low as EN rises), as Espressif's esp_rfc2217_server
        judges it: an RFC 2217 link cannot carry the sequence's millisecond timing. Leaving it with
        both released is a plain reset: the chip boots its flash."""
        if not self.auto_reset:
            return
        with self._lock:
            en_low = rts and not dtr
            if en_low and self._en_low_at is None:
                self._en_low_at = time.monotonic()
                self._stop_node()
                self.mode = None
            elif not en_low and self._en_low_at is not None:
                held = time.monotonic() - self._en_low_at
                self._en_low_at = None
                if held >= RESET_HOLD_S:
                    self.boot("download" if dtr else "flash")

    def boot_later(self, mode):
        t = threading.Timer(0.05, lambda: self.boot(mode))
        t.daemon = True
        t.start()

    def boot(self, mode):
        with self._lock:
            if self.closed:  # a reboot timer that fires after close starts nothing
                return
            self._stop_node()
            self.mode = mode
            self.boots += 1
            self._rx.clear()
            self.tx(BOOT_LOG[mode])
            if mode == "download":
                self.rom = Rom(self)
                return
            fw = bytes(self.flash[0x1000:0x1001])
            if fw != b"\xe9":
                self.tx(b"flash read err, 1000\r\nets_main.c 371 \r\n")
                return
            self._start_node()

    # --- the flash ---
    def erase(self, offset, size):
        end = min(offset + size, FLASH_BYTES)
        self.flash[offset:end] = b"\xff" * (end - offset)

    def program(self, offset, data):
        """Write data at offset; False is a flash write error (--fail-write-at)."""
        end = offset + len(data)
        if end > FLASH_BYTES or (self.fail_write_at is not None and offset <= self.fail_write_at < end):
            return False
        self.flash[offset:end] = data
        return True

    # --- the node ---
    def _partition(self):
        from ..field import image as fimage

        for board in fimage.specs().boards.values():
            if board["chip"] == "esp32" and board["fs_offset"] + board["fs_size"] <= self.flash_mb * 1024 * 1024:
                return board["fs_offset"], board["fs_size"]
        return 0x200000, 0x200000

    def _start_node(self):
        self.flash.flush()
        master, slave = os.openpty()
        tty.setraw(slave)
        offset, size = self._partition()
        env = dict(os.environ, OPENPOLE_WORLD=self.world, OPENPOLE_FS=f"{offset}:{size}")
        env.pop("MICROPYPATH", None)
        cmd = [simnode.micropython(self.vm), "-X", f"heapsize={self.heap}", "-i", str(simnode.BOOT_IMAGE),
               str(self.flash_path)]
        self.proc = subprocess.Popen(cmd, cwd=self.flash_path.parent, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self._pty = master
        threading.Thread(target=self._pump, args=(self.proc, master), daemon=True).start()

    def _pump(self, proc, fd):
        """The node's console to the serial line; a reset from the node boots it again."""
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                break
            if not self.mute:
                self.tx(data)
        rc = proc.wait()
        with self._lock:
            if self.proc is proc:  # not stopped by the reset line: the node reset itself, or Ctrl-D
                self.proc = None
                self._close_pty()
                if rc in (0, -signal.SIGUSR1, 3):
                    self.boot_later("flash")

    def _close_pty(self):
        if self._pty is not None:
            try:
                os.close(self._pty)
            except OSError:
                pass
            self._pty = None

    def _stop_node(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a reset: nothing gets to clean up
            except OSError:
                pass
            proc.wait()
        self._close_pty()

    def close(self):
        with self._lock:
            self.closed = True
            self._stop_node()
            self.flash.flush()


class Server:
    """The board's serial port as an RFC 2217 endpoint (pyserial's PortManager), one client at a time."""

    def __init__(self, board, host="127.0.0.1", port=0):
        self.board = board
        self.sock = socket.create_server((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self._stop = threading.Event()

    @property
    def url(self):
        return f"rfc2217://{self.host}:{self.port}"

    def serve_forever(self):
        import serial.rfc2217

        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            lock = threading.Lock()

            class _Conn:
                def write(self, data):
                    with lock:
                        conn.sendall(data)

            wire = _Conn()
            manager = serial.rfc2217.PortManager(Lines(self.board), wire)
            self.board.attach(lambda data: wire.write(b"".join(manager.escape(data))))
            try:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(8192)
                    except OSError:
                        break
                    if not data:
                        break
                    payload = b"".join(manager.filter(data))
                    if payload:
                        self.board.rx(payload)
            finally:
                self.board.attach(None)
                conn.close()

    def close(self):
        self._stop.set()
        self.sock.close()


def run(args):
    """`openpole sim board`: serve a virtual ESP32 until interrupted; prints its endpoint first."""
    from .world import WorldServer

    if args.flash_mb not in JEDEC_SIZE:
        raise UserError(f"--flash-mb {args.flash_mb}: one of {', '.join(map(str, JEDEC_SIZE))}")
    world = WorldServer()
    board = Board(args.flash, f"{world.host}:{world.port}", chip=args.chip, flash_mb=args.flash_mb,
                  auto_reset=not args.no_auto_reset, fail_write_at=args.fail_write_at, mute=args.mute,
                  heap=args.heap, vm=args.micropython)
    host, port = parse_hostport(args.listen, default_port=0, flag="--listen")
    server = Server(board, host, port)
    print(server.url, flush=True)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    board.boot("flash")  # powered on: it runs what its flash holds
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        board.close()
        world.close()
    return 0
