"""`openpole sim board`: a virtual ESP32 on an RFC 2217 serial endpoint, for the whole flashing flow.

What a technician's USB cable reaches, down to the lines esptool drives:
- The auto-reset circuit of an ESP32 dev board: EN is pulled low while RTS is asserted and DTR is
  not; IO0 while DTR is asserted and RTS is not. esptool's classic DTR/RTS sequence lands in
  download mode, an EN pulse alone boots the flash (see Board.lines for the timing).
- Download mode: the ESP32 ROM bootloader's serial protocol (SLIP frames; Espressif's "Serial
  Protocol" documentation), enough for esptool v5: sync, register reads (the chip magic, the eFuse
  words with the MAC and the package), the SPI flash's JEDEC id through the SPI1 user-command
  registers, SPI attach and parameters, baud change, RAM and flash download with checksums,
  compressed (deflate) writes, MD5. esptool's flasher stub is uploaded as esptool always does; the
  board cannot run Xtensa code, so on the jump to the stub's entry it answers "OHAI" and from then
  on speaks the stub's dialect (2 status bytes, raw MD5, erase and read commands) itself.
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
import struct
import subprocess
import threading
import time
import tty
import zlib
from pathlib import Path

from ..errors import UserError
from . import node as simnode

FLASH_BYTES = 4 * 1024 * 1024
# What an ESP32 (ECO3, ESP32-D0WD-V3) reads back: eFuse words 0-6, the APB date register.
ESP32_MAGIC = 0x00F01D83
REG_MAGIC = 0x40001000
EFUSE_BASE = 0x3FF5A000
APB_CTL_DATE = 0x3FF6607C
UART_CLKDIV = 0x3FF40014
SPI1 = 0x3FF42000  # SPI_CMD at +0, USR +0x1C, USR2 +0x24, W0 +0x80
SPI_CMD_USR = 1 << 18
JEDEC_SIZE = {1: 0x14, 2: 0x15, 4: 0x16, 8: 0x17, 16: 0x18}  # capacity byte of a Winbond W25Qxx
STUB_ENTRY_MIN = 0x40000000  # a MEM_END jumping into IRAM/ROM: esptool's stub
ROM_STATUS, STUB_STATUS = 4, 2
ERR_INVALID, ERR_FAILED, ERR_CRC, ERR_WRITE, ERR_DEFLATE = 0x05, 0x06, 0x07, 0x08, 0x0B
RESET_HOLD_S = 0.002  # EN must stay low this long to reset the chip (the RC on EN)

BOOT_LOG = {
    "download": b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x1 (POWERON_RESET),"
                b"boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n",
    "flash": b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
}


def slip(frame):
    return b"\xc0" + frame.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def checksum(data):
    c = 0xEF
    for b in data:
        c ^= b
    return c


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


class Rom:
    """The download-mode protocol: handle(frame) -> response frames (unescaped)."""

    def __init__(self, board):
        self.board = board
        self.stub = False
        self.regs = {}
        self.write = None  # the flash download in progress: {"offset", "pos", "end", "inflate"}
        self.mem_entry = None

    def status_len(self):
        return STUB_STATUS if self.stub else ROM_STATUS

    def reply(self, op, val=0, data=b"", error=0):
        status = bytes([1 if error else 0, error]) + b"\0" * (self.status_len() - 2)
        body = data + status
        return struct.pack("<BBHI", 1, op, len(body), val) + body

    def handle(self, frame):
        if len(frame) < 8 or frame[0] != 0:
            return []
        _, op, size, chk = struct.unpack("<BBHI", frame[:8])
        data = frame[8:8 + size]
        handler = getattr(self, f"_op_{op:02x}", None)
        if handler is None or (op >= 0xD0 and not self.stub):
            return [self.reply(op, error=ERR_INVALID)]
        try:
            return handler(op, data, chk)
        except (struct.error, ValueError, zlib.error):
            return [self.reply(op, error=ERR_FAILED)]

    # SYNC: the ROM answers eight times; its value is non-zero (the stub's is zero)
    def _op_08(self, op, data, chk):
        if data[:4] != b"\x07\x07\x12\x20":
            return []
        return [self.reply(op, 0 if self.stub else 0x20120707)] * (1 if self.stub else 8)

    def _op_0a(self, op, data, chk):  # READ_REG
        (addr,) = struct.unpack("<I", data[:4])
        return [self.reply(op, self.read_reg(addr))]

    def _op_09(self, op, data, chk):  # WRITE_REG: (addr, value, mask, delay) repeated
        for i in range(0, len(data) - 15, 16):
            addr, value, mask, _ = struct.unpack("<IIII", data[i:i + 16])
            old = self.regs.get(addr, 0)
            self.regs[addr] = (old & ~mask) | (value & mask)
            if addr == SPI1 and value & SPI_CMD_USR:
                self._spi_command()
        return [self.reply(op)]

    def read_reg(self, addr):
        b = self.board
        if addr == REG_MAGIC:
            return b.magic
        if EFUSE_BASE <= addr < EFUSE_BASE + 4 * len(b.efuse):
            return b.efuse[(addr - EFUSE_BASE) // 4]
        if addr == APB_CTL_DATE:
            return 1 << 31  # ECO3
        if addr == UART_CLKDIV:
            return 347  # 40 MHz crystal at 115200 Bd
        return self.regs.get(addr, 0)

    def _spi_command(self):
        """SPI1's user command, as esptool's run_spiflash_command drives it: RDID gives the JEDEC id."""
        cmd = self.regs.get(SPI1 + 0x24, 0) & 0xFFFF
        if cmd == 0x9F:
            self.regs[SPI1 + 0x80] = 0xEF | (0x40 << 8) | (JEDEC_SIZE.get(self.board.flash_mb, 0x16) << 16)
        elif cmd in (0x05, 0x35):  # read status: idle, nothing protected
            self.regs[SPI1 + 0x80] = 0
        self.regs[SPI1] = self.regs.get(SPI1, 0) & ~SPI_CMD_USR

    def _op_0d(self, op, data, chk):  # SPI_ATTACH
        return [self.reply(op)]

    def _op_0b(self, op, data, chk):  # SPI_SET_PARAMS
        return [self.reply(op)]

    def _op_0f(self, op, data, chk):  # CHANGE_BAUDRATE: nothing to retime on a virtual line
        return [self.reply(op)]

    def _op_05(self, op, data, chk):  # MEM_BEGIN
        return [self.reply(op)]

    def _op_07(self, op, data, chk):  # MEM_DATA
        size = struct.unpack("<I", data[:4])[0]
        block = data[16:16 + size]
        return [self.reply(op, error=0 if checksum(block) == chk else ERR_CRC)]

    def _op_06(self, op, data, chk):  # MEM_END: (no_entry, entry)
        no_entry, entry = struct.unpack("<II", data[:8])
        out = [self.reply(op)]
        if not no_entry and entry >= STUB_ENTRY_MIN:
            self.stub = True
            out.append(b"OHAI")
        return out

    def _begin(self, op, data, inflate):
        size, blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        if offset + size > self.board.flash_mb * 1024 * 1024:
            return [self.reply(op, error=ERR_FAILED)]
        self.board.erase(offset, size)  # the ROM erases up front, the stub as it writes: the same in the end
        self.write = {"offset": offset, "pos": offset, "end": offset + size,
                      "inflate": zlib.decompressobj() if inflate else None}
        return [self.reply(op)]

    def _data(self, op, data, chk):
        w = self.write
        size = struct.unpack("<I", data[:4])[0]
        block = data[16:16 + size]
        if w is None:
            return [self.reply(op, error=ERR_FAILED)]
        if checksum(block) != chk:
            return [self.reply(op, error=ERR_CRC)]
        try:
            plain = w["inflate"].decompress(block) if w["inflate"] else block
        except zlib.error:
            return [self.reply(op, error=ERR_DEFLATE)]
        plain = plain[: max(0, w["end"] - w["pos"])] if w["inflate"] else plain
        if not self.board.program(w["pos"], plain):
            return [self.reply(op, error=ERR_WRITE)]
        w["pos"] += len(plain)
        return [self.reply(op)]

    def _end(self, op, data, chk):
        self.write = None
        out = [self.reply(op)]
        if data[:4] == b"\0\0\0\0":  # "reboot": leave the loader and run the flash
            self.board.boot_later("flash")
        return out

    def _op_02(self, op, data, chk):  # FLASH_BEGIN
        return self._begin(op, data, inflate=False)

    def _op_03(self, op, data, chk):  # FLASH_DATA
        return self._data(op, data, chk)

    def _op_04(self, op, data, chk):  # FLASH_END
        return self._end(op, data, chk)

    def _op_10(self, op, data, chk):  # FLASH_DEFL_BEGIN
        return self._begin(op, data, inflate=True)

    def _op_11(self, op, data, chk):  # FLASH_DEFL_DATA
        return self._data(op, data, chk)

    def _op_12(self, op, data, chk):  # FLASH_DEFL_END
        return self._end(op, data, chk)

    def _op_13(self, op, data, chk):  # SPI_FLASH_MD5: the ROM answers in hex, the stub in 16 bytes
        addr, size = struct.unpack("<II", data[:8])
        digest = hashlib.md5(self.board.flash[addr:addr + size]).digest()
        return [self.reply(op, data=digest if self.stub else digest.hex().encode())]

    def _op_14(self, op, data, chk):  # GET_SECURITY_INFO: an ESP32's ROM does not have it
        if self.board.chip_id is None:
            return [self.reply(op, error=ERR_INVALID)]
        return [self.reply(op, data=struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, self.board.chip_id, 0))]

    def _op_d0(self, op, data, chk):  # ERASE_FLASH
        self.board.erase(0, self.board.flash_mb * 1024 * 1024)
        return [self.reply(op)]

    def _op_d1(self, op, data, chk):  # ERASE_REGION
        offset, size = struct.unpack("<II", data[:8])
        self.board.erase(offset, size)
        return [self.reply(op)]

    def _op_d3(self, op, data, chk):  # RUN_USER_CODE
        self.board.boot_later("flash")
        return []


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
    host, port = simnode.parse_hostport(args.listen, default_port=0, flag="--listen")
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
