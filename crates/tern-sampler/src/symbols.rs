//! Names for sampled addresses, read from the binary's debug information once the
//! sampling is over. The symbolizer's cache is emptied afterwards, so that reading
//! names costs memory only while a profile is being rendered.

use std::collections::HashMap;

/// One function at a sampled address. An address inside inlined code has several,
/// the inlined one first and the function it was inlined into last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionAt {
    pub name: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// The functions at each address of a profile.
#[derive(Debug, Default)]
pub struct Symbols {
    by_address: HashMap<usize, Vec<FunctionAt>>,
}

impl Symbols {
    /// Resolves each address once.
    pub fn resolve(addresses: impl IntoIterator<Item = usize>) -> Symbols {
        let mut by_address = HashMap::new();
        for address in addresses {
            by_address
                .entry(address)
                .or_insert_with(|| functions_at(address));
        }
        backtrace::clear_symbol_cache();
        Symbols { by_address }
    }

    /// The functions at `address`, inlined first; an address without a symbol
    /// gets its hexadecimal value as its name.
    pub fn at(&self, address: usize) -> &[FunctionAt] {
        self.by_address.get(&address).map_or(&[], Vec::as_slice)
    }
}

fn functions_at(address: usize) -> Vec<FunctionAt> {
    let mut functions = Vec::new();
    backtrace::resolve(address as *mut std::ffi::c_void, |symbol| {
        let name = symbol
            .name()
            .map_or_else(|| format!("{address:#x}"), |name| format!("{name:#}"));
        functions.push(FunctionAt {
            name,
            file: symbol.filename().map(|f| f.display().to_string()),
            line: symbol.lineno(),
        });
    });
    if functions.is_empty() {
        functions.push(FunctionAt {
            name: format!("{address:#x}"),
            file: None,
            line: None,
        });
    }
    functions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_named_function() -> usize {
        std::hint::black_box(a_named_function as *const () as usize)
    }

    #[test]
    fn an_address_gets_its_function_and_an_unknown_one_its_value() {
        // Inside the function, past its first byte (`resolve` looks one byte back,
        // as for a return address).
        let inside = a_named_function() + 1;
        let symbols = Symbols::resolve([inside, 8]);
        let at = symbols.at(inside);
        assert!(
            at.iter().any(|f| f.name.ends_with("a_named_function")),
            "{at:?}"
        );
        assert_eq!(symbols.at(8)[0].name, "0x8");
        assert!(symbols.at(16).is_empty());
    }
}
