"""The ESP32 ROM loader's serial protocol, as the virtual board (sim.board) answers esptool v5.

SLIP frames of (direction, op, length, checksum) commands (Espressif's "Serial Protocol"
documentation): sync, register reads (the chip magic, the eFuse words with the MAC and the package),
the SPI flash's JEDEC id through the SPI1 user-command registers, SPI attach and parameters, baud
change, RAM and flash download with checksums, compressed (deflate) writes, MD5. esptool's flasher
stub is uploaded as esptool always does; the board cannot run Xtensa code, so on the jump to the
stub's entry Rom answers "OHAI" and from then on speaks the stub's dialect (2 status bytes, raw
MD5, erase) itself. The board object it serves holds the chip facts and the flash.
"""

import functools
import hashlib
import struct
import zlib

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


def slip(frame):
    return b"\xc0" + frame.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def checksum(data):
    c = 0xEF
    for b in data:
        c ^= b
    return c


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

    def _begin(self, op, data, chk, inflate):
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

    # FLASH_BEGIN/DATA/END and their compressed (deflate) twins
    _op_02 = functools.partialmethod(_begin, inflate=False)
    _op_10 = functools.partialmethod(_begin, inflate=True)
    _op_03 = _op_11 = _data
    _op_04 = _op_12 = _end

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
