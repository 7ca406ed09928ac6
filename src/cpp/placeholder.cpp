void g3e_placeholder() {}
