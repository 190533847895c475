//! Just enough of the POSIX shell's lexer to tell where a spliced value would land: in an
//! unquoted word, inside quotes, in a here-document or in a comment.

/// Where the shell reads the next character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Unquoted: a single-quoted value there is exactly one literal word.
    Word,
    /// Inside `'...'`: a quoted value's own quotes would end the string.
    SingleQuotes,
    /// Inside `"..."`: `$(...)` and backquotes still run, whatever quotes a value brings.
    DoubleQuotes,
    /// In a here-document's body, which expands `$(...)` unless its delimiter was quoted and
    /// often feeds another interpreter.
    HereDocument,
    /// In a comment: a newline in the value ends it, and what follows runs.
    Comment,
}

impl Context {
    /// How a message names the place.
    pub fn describe(self) -> &'static str {
        match self {
            Context::Word => "an unquoted word",
            Context::SingleQuotes => "'...' quotes",
            Context::DoubleQuotes => "\"...\" quotes",
            Context::HereDocument => "a here-document",
            Context::Comment => "a comment",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Normal,
    Single,
    Double,
    Comment,
    /// Reading the word after `<<` (or `<<-`).
    HeredocWord {
        strip_tabs: bool,
        word: String,
        started: bool,
    },
    /// In a here-document's body, `line` so far.
    Heredoc {
        delimiter: String,
        strip_tabs: bool,
        line: String,
    },
}

/// Fed the template's text piece by piece, in order; [`Lexer::context`] tells where a value
/// spliced in between would land.
#[derive(Debug, Default)]
pub struct Lexer {
    mode: Mode,
    /// A backslash was just read (in `Normal` or `Double`).
    escaped: bool,
    /// The last character ended a word (or nothing was read yet), so `#` starts a comment.
    at_word_start: bool,
    /// Here-documents whose bodies start at the next newline: (delimiter, strip tabs).
    pending: Vec<(String, bool)>,
    /// `<` was just read in `Normal`.
    after_lt: bool,
    started: bool,
}

impl Lexer {
    pub fn context(&self) -> Context {
        match self.mode {
            Mode::Normal | Mode::HeredocWord { .. } => Context::Word,
            Mode::Single => Context::SingleQuotes,
            Mode::Double => Context::DoubleQuotes,
            Mode::Comment => Context::Comment,
            Mode::Heredoc { .. } => Context::HereDocument,
        }
    }

    pub fn feed(&mut self, text: &str) {
        for c in text.chars() {
            self.char(c);
        }
    }

    fn char(&mut self, c: char) {
        if !self.started {
            self.started = true;
            self.at_word_start = true;
        }
        match &mut self.mode {
            Mode::Normal => self.normal(c),
            Mode::Single => {
                if c == '\'' {
                    self.mode = Mode::Normal;
                }
            }
            Mode::Double => {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == '"' {
                    self.mode = Mode::Normal;
                }
            }
            Mode::Comment => {
                if c == '\n' {
                    self.mode = Mode::Normal;
                    self.newline();
                }
            }
            Mode::HeredocWord {
                strip_tabs,
                word,
                started,
            } => {
                if !*started && word.is_empty() && c == '-' && !*strip_tabs {
                    *strip_tabs = true;
                } else if !*started && (c == ' ' || c == '\t') {
                } else if c.is_whitespace() || ";&|<>()".contains(c) {
                    let done = (std::mem::take(word), *strip_tabs);
                    self.pending.push(done);
                    self.mode = Mode::Normal;
                    self.normal(c);
                } else {
                    *started = true;
                    // Quotes around the delimiter only mark it quoted; the word is the rest.
                    if !matches!(c, '\'' | '"' | '\\') {
                        word.push(c);
                    }
                }
            }
            Mode::Heredoc {
                delimiter,
                strip_tabs,
                line,
            } => {
                if c != '\n' {
                    line.push(c);
                    return;
                }
                let text = if *strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line.as_str()
                };
                if text == delimiter.as_str() {
                    self.mode = Mode::Normal;
                    self.newline();
                } else {
                    line.clear();
                }
            }
        }
    }

    fn normal(&mut self, c: char) {
        if self.escaped {
            self.escaped = false;
            self.at_word_start = false;
            return;
        }
        let after_lt = std::mem::take(&mut self.after_lt);
        match c {
            '\\' => self.escaped = true,
            '\'' => self.mode = Mode::Single,
            '"' => self.mode = Mode::Double,
            '#' if self.at_word_start => self.mode = Mode::Comment,
            '<' if after_lt => {
                self.mode = Mode::HeredocWord {
                    strip_tabs: false,
                    word: String::new(),
                    started: false,
                };
            }
            '<' => self.after_lt = true,
            '\n' => self.newline(),
            _ => {}
        }
        self.at_word_start = c.is_whitespace() || ";&|()<>".contains(c);
    }

    /// At the end of a line outside any body: the first pending here-document begins.
    fn newline(&mut self) {
        self.at_word_start = true;
        if !self.pending.is_empty() {
            let (delimiter, strip_tabs) = self.pending.remove(0);
            self.mode = Mode::Heredoc {
                delimiter,
                strip_tabs,
                line: String::new(),
            };
        }
    }
}
