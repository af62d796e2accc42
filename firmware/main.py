# Runs at boot, after boot.py. It stays source (MicroPython boots main.py, not main.mpy); the app
# it starts is compiled (.mpy), so the node never spends heap compiling it.
import sys

import app

sys.exit(app.main())
