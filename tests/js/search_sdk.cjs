// The official ZeroEntropy Node SDK against `zerank serve` (run by tests/test_search_api.py).
// The SDK reads ZEROENTROPY_BASE_URL and ZEROENTROPY_API_KEY; the documents come as JSON in argv[2]
// ({path: text}), and the results go to stdout as one JSON object for the Python test to check.
const ZeroEntropy = require("zeroentropy");

async function main() {
  const client = new ZeroEntropy({ maxRetries: 0, timeout: 120 * 1000 });
  const documents = JSON.parse(process.argv[2]);
  const collection_name = "node-sdk";
  const out = {};

  await client.collections.add({ collection_name });
  out.collections = (await client.collections.getList()).collection_names;
  for (const [path, text] of Object.entries(documents)) {
    await client.documents.add({ collection_name, path, content: { type: "text", text }, metadata: { sdk: "node" } });
  }
  await client.documents.add({
    collection_name, path: "pages.txt", content: { type: "text-pages", pages: ["first page", "second page"] },
  });

  // the seed documents' example, unchanged
  out.snippets = await client.queries.topSnippets({
    collection_name, query: "What is the capital of France?", k: 5, reranker: "zerank-1",
    precise_responses: false, include_document_metadata: false,
  });
  out.precise = await client.queries.topSnippets({
    collection_name, query: "What is the capital of France?", k: 5, precise_responses: true,
  });
  out.documents = await client.queries.topDocuments({
    collection_name, query: "What is the capital of France?", k: 3, reranker: "zerank-1", include_metadata: true,
    filter: { sdk: { $eq: "node" } },
  });
  out.pages = await client.queries.topPages({ collection_name, query: "second page", k: 2, include_content: true });

  out.info = (await client.documents.getInfo({ collection_name, path: "pages.txt", include_content: true })).document;
  out.page = (await client.documents.getPageInfo({ collection_name, path: "pages.txt", page_index: 1,
                                                   include_content: true })).page;
  out.list = (await client.documents.getInfoList({ collection_name, limit: 2 })).documents.map((d) => d.path);
  out.update = await client.documents.update({ collection_name, path: "pages.txt", metadata: { "list:tags": ["a"] } });
  out.updated_metadata = (await client.documents.getInfo({ collection_name, path: "pages.txt" })).document.metadata;
  out.deleted = (await client.documents.delete({ collection_name, path: ["pages.txt", "missing"] })).deleted_paths;
  out.status = await client.status.getStatus({ collection_name });

  try {
    await client.documents.add({ collection_name, path: "a.pdf", content: { type: "auto", base64_data: "JVBERi0=" } });
    out.binary = "accepted";
  } catch (error) {
    out.binary = { status: error.status, message: error.message };
  }
  try {
    await client.collections.add({ collection_name });
  } catch (error) {
    out.duplicate = { status: error.status, name: error.constructor.name };
  }
  await client.collections.delete({ collection_name });
  out.after_delete = (await client.collections.getList()).collection_names;
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
