package bypass

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -nostdinc -I../../bpf/include" -target bpfel,bpfeb -type sy_p_label -type sy_p_cfg -type sy_p_tuple -type sy_p_sock -type sy_p_rxstate -type sy_p_counts bypass ../../bpf/bypass.c
