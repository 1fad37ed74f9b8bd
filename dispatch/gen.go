package dispatch

//go:generate go tool bpf2go -cc clang -cflags "-O2 -mcpu=v3 -g -Wall -Werror -nostdinc -I../bpf/include" -target bpfel,bpfeb -type sy_plen_list -type sy_small -type sy_small_ent -type sy_prefix_key -type sy_prefix_val -type sy_seg -type sy_port_key -type sy_table -type sy_stats -type sy_ix_bucket -type sy_binding_key -type sy_label_key -type sy_label_val dispatch ../bpf/dispatch.c
//go:generate go tool bpf2go -cc clang -cflags "-O2 -mcpu=v3 -g -Wall -Werror -nostdinc -I../bpf/include" -target bpfel,bpfeb baseline ../bpf/baseline.c
//go:generate go tool bpf2go -cc clang -cflags "-O2 -mcpu=v3 -g -Wall -Werror -nostdinc -I../bpf/include" -target bpfel,bpfeb -output-suffix _test -type peer_key -type peer_val peer ../bpf/peer.c
