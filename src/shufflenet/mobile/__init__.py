"""Mobile formats: ncnn (param + bin), LiteRT (.tflite) and Core ML (.mlpackage), each verified where it runs."""
