"""Mobile formats: ncnn (param + bin), LiteRT (.tflite) and Core ML (.mlpackage), each verified where it runs.

Each module writes one format with the class names and preprocessing the way its ecosystem carries them
and reads them back; the runners of the formats that run here are in :mod:`shufflenet.deploy.runtimes`.
"""
