package bypass

import (
	"io/fs"
	"syscall"
)

func statIno(st fs.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}
