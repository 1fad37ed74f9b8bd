package kernelsplice

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -nostdinc -I../../bpf/include" -target bpfel,bpfeb -type sy_k_cfg -type sy_k_dir -type sy_k_counts kernelsplice ../../bpf/kernelsplice.c
