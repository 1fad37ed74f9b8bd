// Package binding defines switchyard's vocabulary for what traffic goes where:
// a Binding maps (protocol, prefix, ports) to a label. It parses and prints
// the textual forms used by the CLI, the control protocol and the config file,
// and it knows the precedence order between bindings.
//
// It owns no kernel state; package dispatch turns bindings into BPF map
// entries. It is imported by the light client package register, so it must not
// import anything heavier than the standard library.
package binding
