#include "turbogen/paged_attention.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {

void bind_paged_attention(py::module_& m) {
  py::class_<WriteKVArgs> kv(m, "WriteKVArgs",
                             "Arguments of launch_write_kv_cpu / _cuda (csrc/include/turbogen/paged_attention.h).");
  kv.def(py::init<>());
  def_address(kv, "key", &WriteKVArgs::key, "[tokens, kv_heads, head_dim] of `dtype`, contiguous");
  def_address(kv, "value", &WriteKVArgs::value, "[tokens, kv_heads, head_dim] of `dtype`, contiguous");
  def_address(kv, "key_cache", &WriteKVArgs::key_cache, "[num_slots, kv_heads, head_dim] of `dtype`, written");
  def_address(kv, "value_cache", &WriteKVArgs::value_cache, "[num_slots, kv_heads, head_dim] of `dtype`, written");
  def_address(kv, "slot_mapping", &WriteKVArgs::slot_mapping, "int64 [tokens]: a slot, or -1 to skip");
  kv.def_readwrite("tokens", &WriteKVArgs::tokens)
      .def_readwrite("kv_heads", &WriteKVArgs::kv_heads)
      .def_readwrite("head_dim", &WriteKVArgs::head_dim)
      .def_readwrite("num_slots", &WriteKVArgs::num_slots, "num_blocks * block_size");
  def_dtype(kv);

  py::class_<PagedAttentionArgs> args(
      m, "PagedAttentionArgs", "Arguments of launch_paged_attention_cpu / _cuda (csrc/include/turbogen/paged_attention.h).");
  args.def(py::init<>());
  def_address(args, "query", &PagedAttentionArgs::query, "[total_q, heads, head_dim] of `dtype`, contiguous");
  def_address(args, "key_cache", &PagedAttentionArgs::key_cache, "[num_blocks, block_size, kv_heads, head_dim]");
  def_address(args, "value_cache", &PagedAttentionArgs::value_cache, "[num_blocks, block_size, kv_heads, head_dim]");
  def_address(args, "block_tables", &PagedAttentionArgs::block_tables, "int32 [num_seqs, max_blocks_per_seq]");
  def_address(args, "cu_seqlens_q", &PagedAttentionArgs::cu_seqlens_q, "int32 [num_seqs + 1]");
  def_address(args, "seq_lens", &PagedAttentionArgs::seq_lens, "int32 [num_seqs]");
  def_address(args, "out", &PagedAttentionArgs::out, "[total_q, heads, head_dim] of `dtype` output");
  args.def_readwrite("total_q", &PagedAttentionArgs::total_q)
      .def_readwrite("heads", &PagedAttentionArgs::heads)
      .def_readwrite("kv_heads", &PagedAttentionArgs::kv_heads)
      .def_readwrite("head_dim", &PagedAttentionArgs::head_dim)
      .def_readwrite("num_blocks", &PagedAttentionArgs::num_blocks)
      .def_readwrite("block_size", &PagedAttentionArgs::block_size)
      .def_readwrite("num_seqs", &PagedAttentionArgs::num_seqs)
      .def_readwrite("max_blocks_per_seq", &PagedAttentionArgs::max_blocks_per_seq)
      .def_readwrite("scale", &PagedAttentionArgs::scale)
      .def_readwrite("sliding_window", &PagedAttentionArgs::sliding_window, "0: none")
      .def_readwrite("softcap", &PagedAttentionArgs::softcap, "0: none");
  def_dtype(args);

  def_cpu_launcher(m, "launch_write_kv_cpu", &cpu::write_kv,
                   "Scatter keys and values into their cache slots (use turbogen.ops.write_kv).");
  def_cuda_launcher<WriteKVArgs>(m, "launch_write_kv_cuda", TURBOGEN_CUDA_OP(write_kv),
                                 "CUDA write_kv over device addresses, enqueued on `stream`.");
  def_cpu_launcher(m, "launch_paged_attention_cpu", &cpu::paged_attention,
                   "Attention of packed queries over a paged cache (use turbogen.ops.paged_attention).");
  def_cuda_launcher<PagedAttentionArgs>(m, "launch_paged_attention_cuda", TURBOGEN_CUDA_OP(paged_attention),
                                        "CUDA paged attention over device addresses, enqueued on `stream`.");
}

}  // namespace turbogen
