package dispatch

//go:generate go tool bpf2go -cc clang -cflags "-O2 -mcpu=v3 -g -Wall -Werror -nostdinc -I../bpf/include" -target bpfel,bpfeb explain ../bpf/explain.c
