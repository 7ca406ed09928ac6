// Python access to the tokenizer for tests and tools. The runtime builds its Tokenizer in C++
// from the GGUF reader's TokenizerSpec; here the vocabulary comes from Python lists or arrays.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "binding/bindings.h"
#include "tokenizer.h"

namespace py = pybind11;

namespace g3e::binding {

namespace {

// UTF-8 bytes of a str, or the bytes of a bytes object, as a view valid while `obj` lives
// (CPython caches a str's UTF-8 form inside the object).
std::string_view text_view(const py::handle& obj, const char* argument) {
  if (PyBytes_Check(obj.ptr())) {
    char* data = nullptr;
    Py_ssize_t size = 0;
    PyBytes_AsStringAndSize(obj.ptr(), &data, &size);
    return {data, static_cast<size_t>(size)};
  }
  if (PyUnicode_Check(obj.ptr())) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
    if (data != nullptr) return {data, static_cast<size_t>(size)};
    PyErr_Clear();
    // Only lone surrogates (U+D800..U+DFFF) have no UTF-8 form.
    const Py_ssize_t length = PyUnicode_GetLength(obj.ptr());
    Py_ssize_t index = 0;
    while (index < length) {
      const Py_UCS4 c = PyUnicode_ReadChar(obj.ptr(), index);
      if (c >= 0xD800 && c <= 0xDFFF) break;
      ++index;
    }
    throw py::value_error(std::string(argument) + " contains a lone surrogate at index " +
                          std::to_string(index) +
                          ", which has no UTF-8 form; pass bytes instead, for example "
                          "text.encode('utf-8', 'surrogatepass')");
  }
  throw py::type_error(std::string(argument) + " must be str or bytes, not " +
                       std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

template <typename T>
std::vector<T> vector_from(const py::object& values, const char* argument) {
  auto array = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(values);
  if (!array) {
    PyErr_Clear();
    throw py::type_error(std::string(argument) + " must be a list of numbers or a numpy array");
  }
  if (array.ndim() != 1) {
    throw py::value_error(std::string(argument) + " must be one-dimensional, got " +
                          std::to_string(array.ndim()) + " dimensions");
  }
  return std::vector<T>(array.data(), array.data() + array.size());
}

Tokenizer make_tokenizer(const py::sequence& pieces, const py::object& scores,
                         const py::object& types, int32_t bos_id, int32_t eos_id, int32_t unk_id,
                         int32_t pad_id) {
  TokenizerSpec spec;
  spec.pieces.reserve(py::len(pieces));
  for (const py::handle item : pieces) {
    spec.pieces.emplace_back(text_view(item, "each piece"));
  }
  spec.scores = vector_from<float>(scores, "scores");
  spec.types = vector_from<int32_t>(types, "types");
  spec.bos_id = bos_id;
  spec.eos_id = eos_id;
  spec.unk_id = unk_id;
  spec.pad_id = pad_id;
  py::gil_scoped_release release;
  return Tokenizer(std::move(spec));
}

}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<Tokenizer>(m, "Tokenizer",
                        "SentencePiece BPE tokenizer over a GGUF vocabulary (Gemma 3 settings).")
      .def(py::init(&make_tokenizer), py::arg("pieces"), py::arg("scores"), py::arg("types"),
           py::kw_only(), py::arg("bos_id") = 2, py::arg("eos_id") = 1, py::arg("unk_id") = 3,
           py::arg("pad_id") = 0,
           "Build from tokenizer.ggml.tokens (str or bytes), scores and token_type (lists or "
           "numpy arrays).")
      .def(
          "encode",
          [](const Tokenizer& self, const py::object& text, bool add_bos, bool parse_special) {
            const std::string_view view = text_view(text, "text");
            std::vector<int32_t> ids;
            {
              py::gil_scoped_release release;
              ids = self.encode(view, add_bos, parse_special);
            }
            return ids;
          },
          py::arg("text"), py::arg("add_bos") = false, py::arg("parse_special") = false,
          "Encode str or UTF-8 bytes to token ids. Invalid UTF-8 bytes become byte pieces.")
      .def(
          "decode",
          [](const Tokenizer& self, const std::vector<int32_t>& ids) {
            return py::bytes(self.decode(ids));
          },
          py::arg("ids"), "Concatenated bytes of the pieces; control tokens give nothing.")
      .def(
          "piece",
          [](const Tokenizer& self, int32_t id, bool render_control) {
            return py::bytes(self.piece_bytes(id, render_control));
          },
          py::arg("id"), py::arg("render_control") = false,
          "Bytes that decode() emits for one token, or a control token's text with render_control.")
      .def("id_to_piece", &Tokenizer::piece, py::arg("id"),
           "Piece in SentencePiece's spelling (U+2581 for a space).")
      .def(
          "piece_to_id",
          [](const Tokenizer& self, const py::object& piece) {
            return self.piece_to_id(text_view(piece, "piece"));
          },
          py::arg("piece"), "Id of a piece (space as U+2581 or plain), or -1 when absent.")
      .def(
          "token_type",
          [](const Tokenizer& self, int32_t id) { return static_cast<int32_t>(self.type(id)); },
          py::arg("id"), "SentencePiece piece type: 1 normal, 2 unknown, 3 control, 4 user-defined, "
                         "5 unused, 6 byte.")
      .def("score", &Tokenizer::score, py::arg("id"))
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("bos_id", &Tokenizer::bos_id)
      .def_property_readonly("eos_id", &Tokenizer::eos_id)
      .def_property_readonly("unk_id", &Tokenizer::unk_id)
      .def_property_readonly("pad_id", &Tokenizer::pad_id)
      .def("__len__", &Tokenizer::vocab_size);

  py::class_<StreamingDecoder>(m, "StreamingDecoder",
                               "Turns token ids into text one token at a time, emitting only "
                               "complete UTF-8 characters.")
      .def(py::init<const Tokenizer&>(), py::arg("tokenizer"), py::keep_alive<1, 2>())
      .def("push", &StreamingDecoder::push, py::arg("id"),
           "Add one token; return the text completed by it (possibly empty).")
      .def("flush", &StreamingDecoder::flush,
           "Return the rest of the stream; an incomplete UTF-8 sequence becomes U+FFFD.");
}

}  // namespace g3e::binding
