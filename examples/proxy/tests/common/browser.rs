//! Real headless Chromium (Debian's `chromium` and `chromium-driver`) for the
//! page tests: a chromedriver on a free port and a WebDriver session with a
//! throw-away profile, both gone when the [`Browser`] is dropped.

use std::net::TcpStream;
use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free port, killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {CHROMEDRIVER} ({e}): apt-get install chromium chromium-driver")
            });
        ChromeDriver { child, port }
    }

    /// Wait (bounded) until it accepts connections.
    async fn ready(&self) {
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not start listening on port {}", self.port);
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session; derefs to the WebDriver client.
pub struct Browser {
    client: Client,
    _driver: ChromeDriver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// The first element matching the CSS `selector`, once the page shows it
    /// (the review page polls the API), within `wait`.
    pub async fn shown(&self, selector: &str, wait: Duration) -> Element {
        self.wait()
            .at_most(wait)
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{selector} on the page: {e}"))
    }

    pub async fn start() -> Browser {
        // The free port chromedriver was given can be taken by another test
        // between the pick and its bind (it then exits, and something else
        // answered `ready`): a fresh driver, three tries at most.
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::try_start().await {
                Ok(browser) => return browser,
                Err(e) if tries < 3 => eprintln!("WebDriver session failed ({e}); again"),
                Err(e) => panic!("a WebDriver session: {e}"),
            }
        }
    }

    async fn try_start() -> Result<Browser, fantoccini::error::NewSessionError> {
        let driver = ChromeDriver::start();
        driver.ready().await;
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await?;
        Ok(Browser {
            client,
            _driver: driver,
            _profile: profile,
        })
    }

    /// Opens the review page at `page_url`, signs in with `admin_key` on its
    /// form, and waits (up to `wait`) for the list of escalations.
    pub async fn sign_in(&self, page_url: &str, admin_key: &str, wait: Duration) {
        self.sign_in_to(page_url, admin_key, "#list", wait).await;
    }

    /// Opens an admin page at `page_url`, signs in with `admin_key` on its
    /// form, and waits (up to `wait`) for `selector` on the page it comes back to.
    pub async fn sign_in_to(
        &self,
        page_url: &str,
        admin_key: &str,
        selector: &str,
        wait: Duration,
    ) {
        self.goto(page_url).await.unwrap();
        self.find(Locator::Css("#admin-key"))
            .await
            .unwrap()
            .send_keys(admin_key)
            .await
            .unwrap();
        self.find(Locator::Css("#sign-in"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait()
            .at_most(wait)
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{selector} after signing in: {e}"));
    }

    /// Ends the WebDriver session (then the driver and profile go).
    pub async fn close(self) -> Result<(), fantoccini::error::CmdError> {
        self.client.clone().close().await
    }
}

impl Deref for Browser {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Click the element matching the CSS `selector` inside `element`.
pub async fn click_in(element: &Element, selector: &str) {
    element
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {selector}: {e}"));
}
