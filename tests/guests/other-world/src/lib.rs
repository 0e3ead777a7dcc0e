//! A valid component of a different world (`test:other/other`, exporting
//! `run`), built with wit-bindgen alone. Loading it as a sink must fail with
//! an error saying it is not a `sluice:sink` component, before any batch runs.

mod bindings {
    wit_bindgen::generate!({
        inline: "package test:other; world other { export run: func() -> u32; }",
    });
}

struct Other;

impl bindings::Guest for Other {
    fn run() -> u32 {
        42
    }
}

#[allow(
    unsafe_code,
    reason = "the generated component export is an `extern \"C\"` function"
)]
const _: () = {
    bindings::export!(Other with_types_in bindings);
};
