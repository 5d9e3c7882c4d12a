#include <iostream>
#include <string>
#include <vector>
int main(int argc, char **argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    std::string joined;
    for (const auto &a : args) joined += (joined.empty() ? "" : ",") + a;
    std::cout << "cxx: libstdc++ ok args=" << joined << std::endl;
    return 0;
}
