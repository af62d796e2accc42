# openpole node entry point: runs at boot on the ESP32, and under the Unix port for simulation
# (`openpole sim node`). The config sits beside this file on the node's filesystem.
import gc
import sys

import config
from hw import platform
from node import Node


def main():
    try:
        cfg = config.load()
    except (OSError, ValueError) as e:
        print("config: cannot use config.json (%s): fix the file on the node or reflash it" % e)
        return 1
    gc.collect()  # the JSON text and import buffers, before the long-lived objects
    node = Node(cfg, platform(cfg))
    cycles = (cfg.get("sim") or {}).get("cycles")
    done = node.run(cycles)
    print("done cycles=%d published=%d dropped=%d heap_peak=%d" % (done, node.published, node.dropped, node.heap_peak))
    return 0


if __name__ == "__main__":
    sys.exit(main())
