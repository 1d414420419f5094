"""tests/tflite runs only under `make test-tflite` (`make test` passes --ignore=tests/tflite): it needs a python
with TensorFlow and LiteRT, given as $HYPERCLIP_TFLITE_PYTHON. It shares tests/export's run builders."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export"))
